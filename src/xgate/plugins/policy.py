"""The policy plugin's settings and contract: Python auth policies run by `xgate authz` (Envoy's ext_authz), or
lowered to Envoy's RBAC filter when they are declarative (xgate.authz.rules).

Policies are named in the global defaults (`policies: {name: "package.module:callable"}`) and a route names the
one it runs. Envoy's ext_authz filter asks the service with the route and policy names as context extensions,
and the verified JWT payload as metadata, so a policy sees the claims without verifying the token again. Before
translation the control plane imports each policy (ir/policies.py): a `Rule` it finds is lowered, and the
settings carry what it found (`lowered`, `refused`), never config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator

from xgate.api import authz_pb2
from xgate.config.schema import Model, Route
from xgate.config.types import Duration, Name
from xgate.plugins.base import PluginSpec

DEFAULT_SERVICE = "127.0.0.1:18001"
DEFAULT_HTTP_SERVICE = "127.0.0.1:18011"
POLICY_KEY = "xgate_policy"  # ext_authz context extension: the policy the route runs
ROUTE_KEY = "xgate_route"  # ext_authz context extension: the config route's name
POLICY_METADATA = "xgate.policy"  # route metadata namespace: {"name": the policy the route runs}
# transport: http: what Envoy adds to each check (xgate authz's http.py reads them); a client's own headers of
# these names never reach the service (the filter passes no x-xgate-* header of the request on).
HTTP_HEADER_PREFIX = "x-xgate-"
HTTP_POLICY_HEADER = "x-xgate-policy"
HTTP_ROUTE_HEADER = "x-xgate-route"
HTTP_SOURCE_HEADER = "x-xgate-source"
HTTP_CLAIMS_HEADER = "x-xgate-claims"
HTTP_LENGTH_HEADER = "x-xgate-content-length"  # the request's own (the check's content-length is 0)
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class PolicySettings(Model):
    """Defaults: `policies` (name -> import path), `service`, `timeout`, `failure_mode` (closed: deny with
    `failure_status` when the service cannot answer), `transport` (how Envoy asks `xgate authz` about a route
    with a Python policy: gRPC at `service`, or plain HTTP at `http_service`, ~3x cheaper per check; a route whose
    token `xgate authz` verifies always uses gRPC, one call for both). A route: `name`, the policy it runs."""

    policies: dict[Name, str] = Field(default_factory=dict)
    name: Name | None = None
    service: str = Field(default=DEFAULT_SERVICE, pattern=r"^[^:\s]+:\d{1,5}$")
    transport: Literal["grpc", "http"] = "grpc"
    http_service: str = Field(default=DEFAULT_HTTP_SERVICE, pattern=r"^[^:\s]+:\d{1,5}$")
    timeout: Duration = 0.2
    failure_mode: Literal["open", "closed"] = "closed"
    failure_status: Literal[403, 503] = 403
    # What the control plane's import of the policies found (ir/policies.py): name -> xgate.authz.rules.Rule it
    # lowers to Envoy, and name -> why it refuses the policy (a rule the declarative API cannot express).
    _lowered: Mapping[str, Any] = PrivateAttr(default_factory=lambda: _NONE)
    _refused: Mapping[str, str] = PrivateAttr(default_factory=lambda: _NONE)

    @property
    def lowered(self) -> Mapping[str, Any]:
        """The policies lowered to Envoy, by name (the route's own settings carry their listener's)."""
        return self._lowered

    @property
    def refused(self) -> Mapping[str, str]:
        return self._refused

    @property
    def in_python(self) -> list[str]:
        """The policies `xgate authz` runs (neither lowered nor refused), by name."""
        return [name for name in sorted(self.policies) if name not in self._lowered and name not in self._refused]

    def rule(self) -> Any | None:
        """The lowered rule of the policy this route runs, or None when `xgate authz` runs it."""
        return self._lowered.get(self.name) if self.name is not None else None

    def resolved(self, lowered: Mapping[str, Any], refused: Mapping[str, str]) -> PolicySettings:
        """A copy knowing what the control plane's import found."""
        copy = self.model_copy()
        copy._lowered, copy._refused = MappingProxyType(dict(lowered)), MappingProxyType(dict(refused))
        return copy

    @field_validator("policies")
    @classmethod
    def _paths(cls, policies: dict[str, str]) -> dict[str, str]:
        for name, path in policies.items():
            if not _IMPORT_PATH.match(path):
                raise ValueError(f"policy {name}: {path!r} is not an import path like 'package.module:callable'")
        return policies


_NONE: Mapping[str, Any] = MappingProxyType({})


class PolicySpec(PluginSpec[PolicySettings]):
    name: ClassVar[str] = "policy"
    settings = PolicySettings

    def check(
        self, settings: PolicySettings, defaults: PolicySettings | None, inherited: bool, route: Route
    ) -> list[str]:
        defined = defaults.policies if defaults is not None else {}
        if settings.policies and not inherited:
            return ["define policies in the global plugin defaults; a route names one with name"]
        if settings.name is None and inherited:
            return []  # the defaults define policies; a route runs one only when it names it
        if settings.name is None:
            return [f"name the policy this route runs (defined: {', '.join(sorted(defined)) or 'none'})"]
        if settings.name not in defined:
            return [f"policy {settings.name!r} is not defined (defined: {', '.join(sorted(defined)) or 'none'})"]
        refused = (defaults or settings).refused.get(settings.name)
        if refused is not None:
            return [f"policy {settings.name!r} is refused: {refused}"]
        return []

    def resolve(self, settings: PolicySettings, defaults: PolicySettings | None) -> PolicySettings:
        """The route's settings knowing how its policy runs, so route translation knows: lowered or refused
        (only its own policy: another one's change does not make the route a new one), and the transport."""
        name = settings.name
        if defaults is None or name is None:
            return settings
        if defaults.transport != settings.transport:
            settings = settings.model_copy(update={"transport": defaults.transport})
        if name not in defaults.lowered and name not in defaults.refused:
            return settings
        own = {name: defaults.lowered[name]} if name in defaults.lowered else {}
        return settings.resolved(own, {name: defaults.refused[name]} if name in defaults.refused else {})


def policy_resources(settings: PolicySettings | None) -> list[authz_pb2.Policy]:
    """The policies some global/listener defaults define that `xgate authz` runs (not those lowered to Envoy,
    nor refused ones), as it gets them."""
    if settings is None:
        return []
    return [authz_pb2.Policy(name=name, import_path=settings.policies[name]) for name in settings.in_python]
