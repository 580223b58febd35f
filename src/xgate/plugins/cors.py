"""The cors plugin's settings: which cross-origin requests browsers may make (Envoy's CORS filter does the work)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from xgate.config.schema import Model
from xgate.config.types import Duration, Regex
from xgate.plugins.base import PluginSpec


def check_origins(origins: tuple[str, ...]) -> tuple[str, ...]:
    """The `allow_origins` check of the cors and grpc_web settings: each is "*" or scheme://host[:port]."""
    for origin in origins:
        if origin != "*" and "://" not in origin:
            raise ValueError(f"origin {origin!r} must be '*' or scheme://host[:port]")
    return origins


class CorsSettings(Model):
    """Which cross-origin requests browsers may make. `allow_origins: ["*"]` allows any origin."""

    allow_origins: tuple[str, ...] = Field(default=(), min_length=0)
    allow_origin_regexes: tuple[Regex, ...] = ()
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: Duration | None = None
    allow_credentials: bool = False

    _origins = field_validator("allow_origins")(check_origins)


class CorsSpec(PluginSpec[CorsSettings]):
    name: ClassVar[str] = "cors"
    settings = CorsSettings
