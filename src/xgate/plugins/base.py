"""What a plugin is at the config level: its settings model and the checks that need no Envoy knowledge.

A plugin has two halves. This one (`PluginSpec`) is what the IR, the translator and the services all share:
the settings schema, how a route's settings complete from the listener's defaults, and what a route's
settings are refused for. The other half, in `xgate.translate.plugins`, turns validated settings into Envoy
filters, per-route config and resources; the services never see it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from xgate.config.load import validate_model
from xgate.config.schema import Model, Route

S = TypeVar("S", bound=Model)


class PluginSpec(Generic[S]):
    """One plugin's settings type `S` and its config-level rules. Subclasses set `name` and `settings`."""

    name: ClassVar[str]
    settings: type[S]

    def validate(self, raw: Any) -> S:
        """The settings from their config form (`true` means "on, with the defaults"), as strictly as the exported
        JSON schema reads them (see config.load.validate_model); raises pydantic's ValidationError."""
        return validate_model(self.settings, {} if raw is True else raw)

    def check(self, settings: S, defaults: S | None, inherited: bool, route: Route) -> list[str]:
        """Problems of a route's settings (`inherited`: it did not set them, its listener's defaults apply)
        against the listener's `defaults` and the route itself; none by default."""
        del settings, defaults, inherited, route
        return []

    def resolve(self, settings: S, defaults: S | None) -> S:
        """A route's own settings completed from its listener's defaults where translation needs them (e.g. the
        jwt provider the route names); unchanged by default."""
        del defaults
        return settings

    def global_names(self, settings: S) -> list[tuple[str, str, Model]]:
        """What the defaults `settings` define under a name that must mean the same on every listener (e.g. jwt
        providers: Envoy holds one jwt_authn config for all listeners), as (field, what it is called in a
        message, value); none by default."""
        del settings
        return []

    def needs(self, settings: S) -> tuple[str, ...]:
        """Other plugins whose listener filter a route with these (resolved) settings needs (e.g. a token
        verified in Python goes through the policy plugin's ext_authz filter); none by default."""
        del settings
        return ()
