"""The rate_limit plugin's settings and contract: local limits (each Envoy's own token buckets) and global ones
(counted by `xgate ratelimit`), and the descriptor keys the route's actions and the service's limits share."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from xgate.api import duration, ratelimit_pb2
from xgate.config.schema import Model, Route
from xgate.config.types import Duration
from xgate.plugins.base import PluginSpec

DOMAIN = "xgate"  # the rate-limit domain of every descriptor Envoy sends
ROUTE_KEY = "xgate_route"  # descriptor entry: the config route's name
DEFAULT_SERVICE = "127.0.0.1:18003"
MAX_TOKENS = 2**32 - 1  # Envoy's token buckets count in uint32
PRELIMIT_GCRA_FACTOR = 3


def check_by(by: str) -> str:
    """What a limit counts by: route, client_ip, header:<name> or claim:<name>."""
    for prefix in ("header:", "claim:"):
        if by.startswith(prefix) and len(by) > len(prefix):
            return by
    if by in ("route", "client_ip"):
        return by
    raise ValueError(f"by {by!r}: use route, client_ip, header:<name> or claim:<name>")


def descriptor_key(by: str) -> str:
    """The descriptor entry key a `by` other than `route` produces (Envoy's actions and the service agree on it)."""
    if by.startswith("claim:"):
        return f"claim_{by.removeprefix('claim:')}"
    if by == "client_ip":
        return "remote_address"
    return f"header_{by.removeprefix('header:').lower()}"


class LocalLimit(Model):
    """`requests` per `per`, with bursts up to `burst` (default: `requests`), counted per `by`:
    `route` (one bucket for the route), `client_ip`, `header:<name>` or `claim:<name>` (a claim of the token
    the jwt plugin verified), one bucket per value; requests without the header or claim share the route's
    bucket. Each Envoy counts on its own."""

    requests: int = Field(ge=1, le=1_000_000_000)
    per: Duration = 1.0
    burst: int | None = Field(default=None, ge=1, le=1_000_000_000)
    by: str = "route"
    max_keys: int = Field(default=10_000, ge=1, le=1_000_000)

    _by = field_validator("by")(classmethod(lambda cls, by: check_by(by)))

    @model_validator(mode="after")
    def _interval(self) -> LocalLimit:
        if self.per < 0.05:
            raise ValueError("per: Envoy refills buckets at most every 50ms")
        return self


class GlobalLimit(Model):
    """`requests` per `per` across the whole fleet, counted by the rate-limit service. `algorithm`:
    token_bucket (bursts up to `burst`, default `requests`) or gcra (smooth: at most `burst` requests back
    to back, default 1). `shadow`: count and report, never deny. `prelimit` (default on): each Envoy first
    counts the same limit alone and refuses what is over it without asking the service (see `prelimit`)."""

    requests: int = Field(ge=1, le=1_000_000_000)
    per: Duration = 1.0
    algorithm: Literal["token_bucket", "gcra"] = "token_bucket"
    burst: int = Field(default=0, ge=0, le=1_000_000_000)
    by: str = "route"
    shadow: bool = False
    prelimit: bool = True

    _by = field_validator("by")(classmethod(lambda cls, by: check_by(by)))


class RateLimitSettings(Model):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    local: LocalLimit | None = None
    shared: GlobalLimit | None = Field(default=None, alias="global")
    headers: bool = True  # the draft IETF RateLimit headers (x-ratelimit-limit / -remaining / -reset)
    # Where the rate-limit service listens, how long Envoy waits for it, and what it does when it cannot ask
    # (open: allow). Read from the global or listener defaults; one service for the whole gateway.
    service: str = Field(default=DEFAULT_SERVICE, pattern=r"^[^:\s]+:\d{1,5}$")
    timeout: Duration = 0.05
    failure_mode: Literal["open", "closed"] = "open"


class RateLimitSpec(PluginSpec[RateLimitSettings]):
    """Defaults may set only where the service is (and how long to wait for it); a route that sets the plugin
    itself sets a limit."""

    name: ClassVar[str] = "rate_limit"
    settings = RateLimitSettings

    def check(
        self, settings: RateLimitSettings, defaults: RateLimitSettings | None, inherited: bool, route: Route
    ) -> list[str]:
        if not inherited and settings.local is None and settings.shared is None:
            return ["set local, global or both"]
        return []


def prelimit(limit: GlobalLimit) -> LocalLimit | None:
    """The local bucket each Envoy keeps in front of a global limit, or None (shadow, or switched off).

    No single Envoy may pass more than the whole fleet may, so a local bucket of the same rate refuses only
    requests the global limit would refuse too, give or take Envoy's refill steps (at least 50ms: the bucket
    gets one step of tokens more than the global one holds, and a step's tokens rounded up). A request it
    passes and the service refuses costs it a token the service did not take, which costs an Envoy over the
    limit at most a step's worth of admissions (tests/unit/ratelimit/test_prelimit.py). GCRA's exact spacing
    would lose more to the steps, so in front of it the bucket runs at three times the rate. The pre-limit
    keeps the service at no more than that rate per Envoy however much traffic comes, so an overloaded
    service fails open less often, and when it does, no Envoy admits more than that rate."""
    if limit.shadow or not limit.prelimit:
        return None
    gcra = limit.algorithm == "gcra"
    capacity = max(limit.burst, 1) if gcra else (limit.burst or limit.requests)
    rate = limit.requests * (PRELIMIT_GCRA_FACTOR if gcra else 1) / limit.per  # requests a second
    step = max(1 / rate, 0.05)
    tokens = math.ceil(rate * step - 1e-9)
    # Built, not validated: the sums may pass LocalLimit's bounds; Envoy's own bound is 2^32 - 1.
    return LocalLimit.model_construct(
        requests=min(tokens, MAX_TOKENS), per=step, burst=min(capacity + tokens, MAX_TOKENS), by=limit.by,
        max_keys=10_000,
    )  # fmt: skip


def limit_resource(route: str, limit: GlobalLimit) -> ratelimit_pb2.RateLimit:
    """The global limit of one route, keyed the way the route's actions describe its requests."""
    entries = [ratelimit_pb2.RateLimit.Entry(key=ROUTE_KEY, value=route)]
    if limit.by != "route":
        entries.append(ratelimit_pb2.RateLimit.Entry(key=descriptor_key(limit.by)))
    return ratelimit_pb2.RateLimit(
        name=route,
        domain=DOMAIN,
        entries=entries,
        requests=limit.requests,
        per=duration(limit.per),
        algorithm=ratelimit_pb2.RateLimit.GCRA if limit.algorithm == "gcra" else ratelimit_pb2.RateLimit.TOKEN_BUCKET,
        burst=limit.burst,
        shadow=limit.shadow,
    )
