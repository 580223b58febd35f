"""xgate's own xDS resource types (compiled from protos/ into api/v1/) and what every side needs to use them.

The control plane serves these to `xgate authz`, `xgate dyeing` and `xgate ratelimit` over ADS, beside the
Envoy types it serves to Envoys; each service subscribes to the types of its `SERVICES` entry.
"""

from __future__ import annotations

from google.protobuf import duration_pb2
from google.protobuf.message import Message

from xgate.api.v1 import authz_pb2, dyeing_pb2, ratelimit_pb2

_PREFIX = "type.googleapis.com/"


def type_url(message: type[Message] | Message) -> str:
    return _PREFIX + message.DESCRIPTOR.full_name


POLICY = type_url(authz_pb2.Policy)
JWT_PROVIDER = type_url(authz_pb2.JwtProvider)
DYEING_SETTINGS = type_url(dyeing_pb2.DyeingSettings)
RATE_LIMIT = type_url(ratelimit_pb2.RateLimit)

# Each service (its node's user_agent_name is "xgate-<service>") and the resource types it is configured with.
SERVICES: dict[str, tuple[str, ...]] = {
    "authz": (POLICY, JWT_PROVIDER),
    "dyeing": (DYEING_SETTINGS,),
    "ratelimit": (RATE_LIMIT,),
}
SERVICE_TYPES = frozenset(url for urls in SERVICES.values() for url in urls)
MESSAGES: dict[str, type[Message]] = {
    POLICY: authz_pb2.Policy,
    JWT_PROVIDER: authz_pb2.JwtProvider,
    DYEING_SETTINGS: dyeing_pb2.DyeingSettings,
    RATE_LIMIT: ratelimit_pb2.RateLimit,
}
# How each type is named in `xgate translate` output and the golden files.
KINDS = {
    POLICY: "policies",
    JWT_PROVIDER: "jwt_providers",
    DYEING_SETTINGS: "dyeing_settings",
    RATE_LIMIT: "rate_limits",
}
SHORT = {POLICY: "Policy", JWT_PROVIDER: "JwtProvider", DYEING_SETTINGS: "DyeingSettings", RATE_LIMIT: "RateLimit"}


def duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


__all__ = [
    "DYEING_SETTINGS",
    "JWT_PROVIDER",
    "KINDS",
    "MESSAGES",
    "POLICY",
    "RATE_LIMIT",
    "SERVICES",
    "SERVICE_TYPES",
    "SHORT",
    "authz_pb2",
    "duration",
    "dyeing_pb2",
    "ratelimit_pb2",
    "seconds",
    "type_url",
]
