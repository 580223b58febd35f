"""Token bucket and GCRA decisions: the pure arithmetic, the Backend interface, and the in-memory backend.

Both algorithms work in microseconds on floats, and the Redis backend's Lua scripts (redis_backend.py) repeat
the same operations in the same order, so for the same clock readings both backends give the same decisions
(tests/integration/test_ratelimit_redis.py checks it). Change one, change the other.

- Token bucket: `capacity` tokens (`burst`, or `requests` when burst is 0), refilled at `requests` per
  `unit_seconds`. After an idle period a whole bucket passes at once.
- GCRA (leaky bucket as a meter): emission interval T = unit/requests, tolerance tau = T * (burst - 1). After
  an idle period at most max(burst, 1) requests pass back to back (burst 0 and 1 both mean strictly one per
  T); beyond that the requests must be spaced T apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

Algorithm = Literal["token_bucket", "gcra"]
ALGORITHMS: tuple[Algorithm, ...] = ("token_bucket", "gcra")

# Float slack: Redis TIME is ~1.8e15 us, where one ulp is 0.25 us, so "exactly on time" can come out a
# fraction of a microsecond early. One microsecond (and the tokens it refills) never changes a real decision.
EPS_US = 1.0
# A state is kept this long after it is back to idle (Redis: PEXPIRE rounded up to ms, plus 1 ms), so it is
# only dropped once float rounding cannot matter any more; memory and Redis must keep it equally long.
KEEP_SLACK_US = 1000.0


@dataclass(frozen=True, slots=True)  # slots: a service holds one per route, 50,000 and more
class Rate:
    """`requests` per `unit_seconds`, shaped by `algorithm`; `burst` as described in the module docstring."""

    requests: int
    unit_seconds: float
    algorithm: Algorithm = "token_bucket"
    burst: int = 0

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"a rate needs at least 1 request per unit, not {self.requests}")
        if not self.unit_seconds > 0:
            raise ValueError(f"a rate's unit must be positive, not {self.unit_seconds}")
        if self.burst < 0:
            raise ValueError(f"burst must be 0 or more, not {self.burst}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}, expected one of {', '.join(ALGORITHMS)}")

    @property
    def capacity(self) -> int:
        """How many hits may pass back to back after an idle period."""
        if self.algorithm == "token_bucket":
            return self.burst or self.requests
        return max(self.burst, 1)

    @property
    def unit_us(self) -> float:
        return self.unit_seconds * 1e6

    @property
    def interval_us(self) -> float:
        """Microseconds per request (GCRA's emission interval T)."""
        return self.unit_us / self.requests

    @property
    def tokens_per_us(self) -> float:
        return self.requests / self.unit_us


@dataclass(frozen=True)
class Decision:
    """The answer for one key and `hits`.

    `limit` is the rate's `requests` (per unit). `remaining`: token bucket, whole tokens left now; GCRA, how
    many more requests fit into the next unit at the configured pace (at most `limit`); 0 when denied by
    GCRA. `reset_seconds`: when allowed, until the key is back to its idle state (bucket full); when denied,
    until the same request would pass.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float


class Backend(Protocol):
    """Where counters live. `decide` takes `hits` (Envoy's hits_addend; 0 only checks) atomically per key.

    Errors: a backend that talks to a server raises its client's errors (OSError, redis errors, TimeoutError);
    the service turns them into its failure mode.
    """

    async def decide(self, key: str, rate: Rate, hits: int = 1) -> Decision: ...

    async def aclose(self) -> None: ...


# -- the arithmetic, shared by the in-memory backend and mirrored in Lua ---------------------------------------

TokenState = tuple[float, float]  # (tokens used and not yet refilled, time of that figure in us)


def token_bucket(state: TokenState | None, now: float, rate: Rate, hits: int) -> tuple[Decision, TokenState, float]:
    """One token bucket decision at `now` (us); returns it, the new state and how long (us) to keep the state.

    The state counts the tokens taken rather than those left, so a new limit table that changes the capacity
    keeps what a client has used: raised from 1 to 5 after one hit, 4 are left.
    """
    capacity = rate.capacity
    per_us = rate.tokens_per_us
    slack = EPS_US * per_us
    if state is None:
        used, ts = 0.0, now
    else:
        used, ts = state
    if now > ts:
        used = max(0.0, used - (now - ts) * per_us)
        ts = now
    if used + hits <= capacity + slack:
        allowed = True
        used = used + hits
        reset = used / per_us
    else:
        allowed = False
        reset = (used + min(hits, capacity) - capacity) / per_us
    remaining = max(0, math.floor(capacity - used + slack))
    return Decision(allowed, rate.requests, remaining, math.ceil(reset) / 1e6), (used, ts), used / per_us


def gcra(tat: float | None, now: float, rate: Rate, hits: int) -> tuple[Decision, float, float]:
    """One GCRA decision at `now` (us) from the theoretical arrival time `tat`; returns it, the new TAT and
    how long (us) to keep it (past the TAT the key is idle and may go)."""
    interval = rate.interval_us
    window = rate.capacity * interval  # tau + T
    if tat is None or tat < now:
        tat = now
    new_tat = tat + hits * interval
    if new_tat - now <= window + EPS_US:
        ahead = new_tat - now
        fits = math.floor((rate.unit_us + window - interval - ahead + EPS_US) / interval)
        remaining = min(rate.requests, max(0, fits))
        return Decision(True, rate.requests, remaining, math.ceil(ahead) / 1e6), new_tat, ahead
    retry = new_tat - window - now
    return Decision(False, rate.requests, 0, math.ceil(retry) / 1e6), tat, tat - now


# -- in-memory backend ----------------------------------------------------------------------------------------


class MemoryBackend:
    """Counters in this process: for a single service instance (the single-machine default) and for tests.

    `clock` returns seconds (default time.monotonic); tests inject a fake one. Idle keys are forgotten: a
    key's state is dropped once it is back to idle, looked at lazily and swept when the number of decisions
    since the last sweep reaches the number of keys (amortised O(1) per decision).
    Resources: memory proportional to the keys active within their unit.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[TokenState, float]] = {}
        self._tats: dict[str, tuple[float, float]] = {}
        self._since_sweep = 0

    def __len__(self) -> int:
        """Keys currently held (expired ones included until the next sweep)."""
        return len(self._buckets) + len(self._tats)

    async def decide(self, key: str, rate: Rate, hits: int = 1) -> Decision:
        return self.decide_now(key, rate, hits)

    def decide_now(self, key: str, rate: Rate, hits: int = 1) -> Decision:
        """`decide` without the coroutine, for callers that are not async."""
        now = self._clock() * 1e6
        self._since_sweep += 1
        if self._since_sweep >= len(self) + 1024:
            self._sweep(now)
        if rate.algorithm == "token_bucket":
            held = self._buckets.get(key)
            state = held[0] if held is not None and held[1] > now else None
            decision, new_state, keep = token_bucket(state, now, rate, hits)
            self._buckets[key] = (new_state, now + keep + KEEP_SLACK_US)
        else:
            held_tat = self._tats.get(key)
            tat = held_tat[0] if held_tat is not None and held_tat[1] > now else None
            decision, new_tat, keep = gcra(tat, now, rate, hits)
            self._tats[key] = (new_tat, now + keep + KEEP_SLACK_US)
        return decision

    async def aclose(self) -> None:
        self._buckets.clear()
        self._tats.clear()

    def _sweep(self, now: float) -> None:
        self._since_sweep = 0
        self._buckets = {key: held for key, held in self._buckets.items() if held[1] > now}
        self._tats = {key: held for key, held in self._tats.items() if held[1] > now}
