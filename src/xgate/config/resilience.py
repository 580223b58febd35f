"""Resilience settings of upstreams, routes and listeners: health checks, outlier detection, circuit breakers,
retries and timeouts (pydantic v2, strict, frozen); every default is Envoy's unless a reason says otherwise."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from xgate.config.base import Model
from xgate.config.types import Duration

HOST_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?$"
STATUS_RANGE_PATTERN = r"^[1-5][0-9]{2}-[1-5][0-9]{2}$"
StatusRange = Annotated[int, Field(ge=100, le=599)] | Annotated[str, StringConstraints(pattern=STATUS_RANGE_PATTERN)]
GRPC_SERVICE_PATTERN = r"^[A-Za-z0-9_.]*$"

Method = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"]
# RFC 9110 9.2.2: the methods a client may send twice with the effect of once; the others are retried only
# where the request never reached the upstream.
IDEMPOTENT: tuple[Method, ...] = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")


# -- health checks -------------------------------------------------------------------------------------------

_ONLY = {"path": "http", "expected_statuses": "http", "service": "grpc"}


class HealthCheck(Model):
    """Active health checks: Envoy checks every endpoint each `interval`; an endpoint that fails
    `unhealthy_threshold` times in a row takes no traffic until it passes `healthy_threshold` times.

    `type`: `http` (GET `path`; `expected_statuses` count as healthy: codes or "200-399" ranges, by default
    200-399 as Kubernetes' HTTP probes count them), `grpc` (grpc.health.v1 Check of `service`, "" for the
    whole server; needs `protocol: http2`) or `tcp` (a connection that opens is healthy).

    `host` is the Host (HTTP) or :authority (gRPC) of the checks; by default each endpoint gets its own
    `host:port`, what a client calling it directly sends (Envoy would send the cluster's name, `upstream/<name>`,
    which nginx and Envoy answer with 400)."""

    type: Literal["http", "grpc", "tcp"] = "http"
    path: str = Field(default="/healthz", pattern=r"^/[^\s]*$")
    interval: Duration = 1.0
    timeout: Duration = 0.5
    unhealthy_threshold: int = Field(default=2, ge=1, le=100)
    healthy_threshold: int = Field(default=1, ge=1, le=100)
    host: str | None = Field(default=None, max_length=255, pattern=HOST_PATTERN)
    expected_statuses: tuple[StatusRange, ...] = Field(default=("200-399",), min_length=1)
    service: str = Field(default="", max_length=255, pattern=GRPC_SERVICE_PATTERN)

    @model_validator(mode="after")
    def _consistent(self) -> HealthCheck:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be greater than 0")
        for field, kind in _ONLY.items():
            if field in self.model_fields_set and self.type != kind:
                raise ValueError(f"{field} applies to {kind} health checks only (this one is {self.type})")
        if self.type == "tcp" and self.host is not None:
            raise ValueError("host applies to http and grpc health checks only (this one is tcp)")
        for start, end in self.status_ranges:
            if start > end:
                raise ValueError(f"expected_statuses: {start}-{end} is an empty range")
        return self

    @property
    def status_ranges(self) -> list[tuple[int, int]]:
        """Each expected status or range as (first, last), both included."""
        ranges = []
        for item in self.expected_statuses:
            if isinstance(item, int):
                ranges.append((item, item))
            else:
                first, _, last = item.partition("-")
                ranges.append((int(first), int(last)))
        return ranges


# -- outlier detection (passive health) ----------------------------------------------------------------------


class FailurePercentage(Model):
    """Eject an endpoint whose share of failed requests in one `interval` reaches `threshold` percent, once it
    had `request_volume` requests in it and the upstream has `minimum_hosts` endpoints with that many.

    Counted are local failures (connections refused or reset, timeouts): Envoy counts each request that got a
    connection as a local success, so an endpoint that accepts connections and never answers sits at 50% and
    a healthy one at 0%, hence the default of 30. `include_5xx` also ejects on the share of the upstream's own
    5xx answers (off by default: an application that fails some requests fails them on every endpoint, and
    ejecting endpoints would not help it)."""

    threshold: int = Field(default=30, ge=1, le=100)
    request_volume: int = Field(default=10, ge=1, le=1_000_000)
    minimum_hosts: int = Field(default=1, ge=1, le=1000)
    include_5xx: bool = False


class SuccessRate(Model):
    """Eject an endpoint whose success rate in one `interval` is below the mean of its peers' minus
    `stdev_factor` standard deviations (Envoy's defaults: 1.9, 5 endpoints, 100 requests each)."""

    stdev_factor: float = Field(default=1.9, gt=0, le=100)
    minimum_hosts: int = Field(default=5, ge=1, le=1000)
    request_volume: int = Field(default=100, ge=1, le=1_000_000)


class OutlierDetection(Model):
    """Passive health: endpoints that fail real requests are taken out of the balancing (ejected) for
    `base_ejection_time`, longer each time they fail again right after coming back (up to
    `max_ejection_time`). Local failures (refused or reset connections, timeouts) are counted apart from the
    upstream's answers (Envoy's split_external_local_origin_errors). A count of 0 switches that rule off."""

    consecutive_5xx: int = Field(default=5, ge=0, le=1000)
    consecutive_gateway_errors: int = Field(default=3, ge=0, le=1000)
    consecutive_local_failures: int = Field(default=3, ge=0, le=1000)
    failure_percentage: FailurePercentage | None = Field(default_factory=lambda: FailurePercentage())
    success_rate: SuccessRate | None = Field(default_factory=lambda: SuccessRate())
    interval: Duration = 1.0
    base_ejection_time: Duration = 5.0
    max_ejection_time: Duration = 60.0
    max_ejection_percent: int = Field(default=50, ge=0, le=100)

    @model_validator(mode="after")
    def _times(self) -> OutlierDetection:
        if self.interval <= 0 or self.base_ejection_time <= 0:
            raise ValueError("interval and base_ejection_time must be greater than 0")
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError("max_ejection_time must be at least base_ejection_time")
        return self


# -- circuit breakers ----------------------------------------------------------------------------------------


class RetryBudget(Model):
    """Retries in flight may be `percent` of the requests in flight to the upstream, and never fewer than
    `min_concurrency` (instead of Envoy's fixed 3 concurrent retries)."""

    percent: float = Field(default=50.0, ge=0, le=100)
    min_concurrency: int = Field(default=10, ge=0, le=1_000_000)


class CircuitBreakers(Model):
    """Limits per upstream and Envoy (shared by its workers); a request over a limit is answered 503 at once
    with `x-envoy-overloaded: true` (Envoy's response flag UO)."""

    max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    max_pending_requests: int = Field(default=1024, ge=1, le=1_000_000)
    max_requests: int = Field(default=1024, ge=1, le=1_000_000)
    retry_budget: RetryBudget = Field(default_factory=lambda: RetryBudget())


# -- retries -------------------------------------------------------------------------------------------------

RetryOn = Literal[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "envoy-ratelimited",
    # gRPC status codes (the upstream must send them in the headers: a trailers-only answer)
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
]
# Conditions under which the request never reached the upstream application: safe to retry for any method.
NOT_SENT: frozenset[str] = frozenset({"connect-failure", "refused-stream", "reset-before-request"})


class Backoff(Model):
    """Time between attempts: random, up to `base` x 2^(attempt - 1), at most `max` (default 10 x base)."""

    base: Duration = 0.025
    max: Duration | None = None

    @model_validator(mode="after")
    def _order(self) -> Backoff:
        if self.base <= 0:
            raise ValueError("base must be greater than 0")
        if self.max is not None and self.max < self.base:
            raise ValueError("max must be at least base")
        return self


class Retries(Model):
    """Up to `attempts` more tries, each on another endpoint than the ones tried before, when an answer meets
    `retry_on`. Requests with a method outside `methods` (by default the non-idempotent POST, PATCH and
    CONNECT) are retried only where they never reached the upstream (connect-failure, refused-stream; reset
    becomes reset-before-request)."""

    attempts: int = Field(default=2, ge=0, le=10)
    retry_on: tuple[RetryOn, ...] = ("connect-failure", "refused-stream", "reset-before-request")
    status_codes: tuple[Annotated[int, Field(ge=100, le=599)], ...] = ()
    methods: tuple[Method, ...] = IDEMPOTENT
    per_try_timeout: Duration | None = None
    per_try_idle_timeout: Duration | None = None
    backoff: Backoff = Field(default_factory=lambda: Backoff())

    @model_validator(mode="after")
    def _codes(self) -> Retries:
        if "retriable-status-codes" in self.retry_on and not self.status_codes:
            raise ValueError("retry_on: retriable-status-codes needs status_codes")
        return self

    @property
    def conditions(self) -> tuple[str, ...]:
        """retry_on as Envoy reads it (status_codes imply retriable-status-codes), in a stable order."""
        found = dict.fromkeys(self.retry_on)
        if self.status_codes:
            found["retriable-status-codes"] = None
        return tuple(found)

    @property
    def safe_conditions(self) -> tuple[str, ...]:
        """The conditions that also apply to methods outside `methods`: those where the request was not sent."""
        safe = [condition for condition in self.conditions if condition in NOT_SENT]
        if "reset" in self.conditions and "reset-before-request" not in safe:
            safe.append("reset-before-request")
        return tuple(safe)
