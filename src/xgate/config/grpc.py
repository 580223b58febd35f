"""gRPC in the config: a route match by service and method (sugar over the path) and a route's gRPC options."""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypeVar

from pydantic import Field

from xgate.config.base import Model
from xgate.config.types import Duration

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
SERVICE_PATTERN = rf"^{_IDENTIFIER}(\.{_IDENTIFIER})*$"
METHOD_PATTERN = rf"^{_IDENTIFIER}$"
M = TypeVar("M", bound="_HasGrpcPath")
# The gRPC status codes Envoy's retry_on names (retried when the upstream answers with them in its headers,
# i.e. a trailers-only response: how servers fail a call before sending any message).
GrpcRetryOn = Literal["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"]


class GrpcMatch(Model):
    """A gRPC call by service (fully qualified: `package.Service`) and optionally method: the path
    `/package.Service/Method` (exact) or `/package.Service/` (prefix)."""

    service: str = Field(pattern=SERVICE_PATTERN, max_length=512)
    method: str | None = Field(default=None, pattern=METHOD_PATTERN, max_length=256)

    def path(self) -> dict[str, str]:
        if self.method is not None:
            return {"exact": f"/{self.service}/{self.method}"}
        return {"prefix": f"/{self.service}/"}


class _HasGrpcPath(Protocol):
    grpc: GrpcMatch | None
    path: Any
    model_fields_set: set[str]


def with_grpc_path(match: M) -> M:
    """A match with `grpc` gets the path it stands for (so ordering and translation see an ordinary path); a
    path written next to it must be that same path. The path stays "not set" for dumps, so `xgate get` prints
    the match as written."""
    if match.grpc is None:
        return match
    derived = type(match.path).model_validate(match.grpc.path())
    if "path" in match.model_fields_set and match.path != derived:
        raise ValueError("set path or grpc, not both (grpc stands for the path of its service and method)")
    object.__setattr__(match, "path", derived)  # frozen: this is its construction, not a change
    return match


class GrpcRoute(Model):
    """A route that carries gRPC: the client's `grpc-timeout` is honoured (capped at `max_timeout`, when set)
    instead of the route's `timeout`, which then defaults to none (a stream lasts as long as its deadline);
    `retry_on` adds gRPC status codes to the conditions of the route's `retries` (its attempts, backoff and
    per-try timeout; by default 2 attempts), for every method: a gRPC call is a POST."""

    max_timeout: Duration | None = None
    retry_on: tuple[GrpcRetryOn, ...] = ()
