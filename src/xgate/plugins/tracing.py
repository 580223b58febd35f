"""The tracing plugin's settings: Envoy's OpenTelemetry tracer, where it sends spans and how many requests it traces.

Set in the global or listener defaults (`collector`, `service_name`, `sampling`); a route may only change its
own `sampling`, or switch tracing off (`tracing: false`: Envoy records nothing for it). A request carrying a W3C
`traceparent` is continued (same trace id, Envoy's span a child of the caller's); it is recorded when the route's
sampling picks it, unless the caller said "not sampled" (Envoy 1.40 lets a caller veto, never force, a trace).
Envoy passes the context on to the upstream and to xgate's services.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from xgate.config.schema import Model, Route
from xgate.plugins.base import PluginSpec

DEFAULT_COLLECTOR = "127.0.0.1:4317"  # an OpenTelemetry Collector on the host, OTLP/gRPC's standard port
DEFAULT_SERVICE_NAME = "xgate-envoy"
# What a route may set itself; the rest belongs to the listener (one tracer per connection manager).
ROUTE_FIELDS = frozenset({"sampling"})


class TracingSettings(Model):
    """`collector`: the OTLP/gRPC receiver (host:port); `service_name`: Envoy's spans' service.name;
    `sampling`: the percentage of requests without a caller's decision that start a trace."""

    collector: str = Field(default=DEFAULT_COLLECTOR, pattern=r"^[^:\s]+:\d{1,5}$")
    service_name: str = Field(default=DEFAULT_SERVICE_NAME, min_length=1, max_length=128)
    sampling: float = Field(default=100.0, ge=0, le=100)  # to 0.01% (Envoy's resolution for a route)


class TracingSpec(PluginSpec[TracingSettings]):
    name: ClassVar[str] = "tracing"
    settings = TracingSettings

    def check(
        self, settings: TracingSettings, defaults: TracingSettings | None, inherited: bool, route: Route
    ) -> list[str]:
        if inherited:
            return []
        listener_only = sorted(settings.model_fields_set - ROUTE_FIELDS)
        if listener_only:
            return [f"{', '.join(listener_only)}: set in the global or listener defaults; a route sets sampling only"]
        return []

    def resolve(self, settings: TracingSettings, defaults: TracingSettings | None) -> TracingSettings:
        """The listener's collector and service name, with the route's own sampling."""
        if defaults is None:
            return settings
        return defaults.model_copy(update={name: getattr(settings, name) for name in settings.model_fields_set})
