"""The policy plugin's settings and contract: Python auth policies run by `xgate authz` (Envoy's ext_authz).

Policies are named in the global defaults (`policies: {name: "package.module:callable"}`) and a route names the
one it runs. Envoy's ext_authz filter asks the service with the route and policy names as context extensions,
and the verified JWT payload as metadata, so a policy sees the claims without verifying the token again.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from xgate.api import authz_pb2
from xgate.config.schema import Model, Route
from xgate.config.types import Duration, Name
from xgate.plugins.base import PluginSpec

DEFAULT_SERVICE = "127.0.0.1:18001"
POLICY_KEY = "xgate_policy"  # ext_authz context extension: the policy the route runs
ROUTE_KEY = "xgate_route"  # ext_authz context extension: the config route's name
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class PolicySettings(Model):
    """Defaults: `policies` (name -> import path), `service`, `timeout`, `failure_mode` (closed: deny with
    `failure_status` when the service cannot answer). A route: `name`, the policy it runs."""

    policies: dict[Name, str] = Field(default_factory=dict)
    name: Name | None = None
    service: str = Field(default=DEFAULT_SERVICE, pattern=r"^[^:\s]+:\d{1,5}$")
    timeout: Duration = 0.2
    failure_mode: Literal["open", "closed"] = "closed"
    failure_status: Literal[403, 503] = 403

    @field_validator("policies")
    @classmethod
    def _paths(cls, policies: dict[str, str]) -> dict[str, str]:
        for name, path in policies.items():
            if not _IMPORT_PATH.match(path):
                raise ValueError(f"policy {name}: {path!r} is not an import path like 'package.module:callable'")
        return policies


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
        return []


def policy_resources(settings: PolicySettings | None) -> list[authz_pb2.Policy]:
    """The policies some global/listener defaults define, as `xgate authz` gets them."""
    policies = settings.policies if settings is not None else {}
    return [authz_pb2.Policy(name=name, import_path=path) for name, path in sorted(policies.items())]
