"""The grpc_web plugin's settings: browsers call gRPC services through Envoy's gRPC-Web filter (no Python runs)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from xgate.config.schema import Model
from xgate.config.types import Duration
from xgate.plugins.base import PluginSpec

# The request headers a gRPC-Web client sends (grpc-web-text and binary alike), and the response headers its
# JavaScript must read: CORS hides them from the page unless they are allowed and exposed.
REQUEST_HEADERS = ("content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "authorization")
RESPONSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")


class GrpcWebSettings(Model):
    """gRPC-Web on a route whose upstream speaks gRPC (`protocol: http2`): Envoy turns the browser's
    `application/grpc-web` (binary) and `application/grpc-web-text` (base64) calls into gRPC, and the answer
    (trailers included) back. `allow_origins` answers browsers' CORS preflights for those origins with the
    headers gRPC-Web needs (it sets the route's CORS policy; leave it out to use the cors plugin instead)."""

    allow_origins: tuple[str, ...] = Field(default=(), max_length=64)
    max_age: Duration | None = 600.0

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if origin != "*" and "://" not in origin:
                raise ValueError(f"origin {origin!r} must be '*' or scheme://host[:port]")
        return origins


class GrpcWebSpec(PluginSpec[GrpcWebSettings]):
    name: ClassVar[str] = "grpc_web"
    settings = GrpcWebSettings

    def needs(self, settings: GrpcWebSettings) -> tuple[str, ...]:
        # The preflight is answered by Envoy's CORS filter, with the policy this plugin puts on the route.
        return ("cors",) if settings.allow_origins else ()
