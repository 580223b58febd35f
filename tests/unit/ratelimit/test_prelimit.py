"""The pre-limit in front of a global limit, simulated with the service's own arithmetic for the global bucket
and a model of Envoy's local bucket (refilled in steps): under the limit it never refuses; over it, it takes
from an Envoy's admissions no more than one refill step (a token bucket) or 3% (GCRA, whose pre-limit runs at
three times the rate); and when the service fails open it holds each Envoy to that rate."""

from __future__ import annotations

import random

import pytest

from xgate.plugins.rate_limit import PRELIMIT_GCRA_FACTOR, GlobalLimit, LocalLimit, prelimit
from xgate.ratelimit.algorithms import Rate, gcra, token_bucket

LIMITS = [
    GlobalLimit(requests=20, per=1.0),
    GlobalLimit(requests=200, per=1.0, burst=50),
    GlobalLimit(requests=100, per=60.0),
    GlobalLimit(requests=20, per=1.0, algorithm="gcra", burst=2),
    GlobalLimit(requests=5, per=1.0, algorithm="gcra"),
    GlobalLimit(requests=1000, per=0.5),
]


class EnvoyBucket:
    """Envoy's local token bucket: full at the start, `requests` more every `per` seconds, up to `burst`."""

    def __init__(self, local: LocalLimit, phase: float) -> None:
        assert local.burst is not None
        self.tokens, self.capacity, self.step, self.per = float(local.burst), local.burst, local.requests, local.per
        self.next_fill = phase

    def take(self, now: float) -> bool:
        while now >= self.next_fill:
            self.tokens = min(self.capacity, self.tokens + self.step)
            self.next_fill += self.per
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Service:
    """The global limit as the rate-limit service decides it."""

    def __init__(self, limit: GlobalLimit) -> None:
        self.rate = Rate(limit.requests, limit.per, limit.algorithm, limit.burst)
        self.state: object = None

    def decide(self, now: float) -> bool:
        state: object
        if self.rate.algorithm == "token_bucket":
            decision, state, _ = token_bucket(self.state, now * 1e6, self.rate, 1)  # type: ignore[arg-type]
        else:
            decision, state, _ = gcra(self.state, now * 1e6, self.rate, 1)  # type: ignore[arg-type]
        if decision.allowed:
            self.state = state
        return decision.allowed


def arrivals(limit: GlobalLimit, load: float, count: int, seed: int) -> list[float]:
    generator, now, times = random.Random(seed), 0.0, []
    for _ in range(count):
        now += generator.expovariate(load * limit.requests / limit.per)
        times.append(now)
    return times


@pytest.mark.parametrize("limit", LIMITS)
def test_under_the_limit_the_prelimit_never_refuses(limit: GlobalLimit) -> None:
    local = prelimit(limit)
    assert local is not None
    interval = limit.per / limit.requests
    for phase in (0.0, 0.013, local.per / 2):
        bucket = EnvoyBucket(local, phase)
        assert all(bucket.take(index * interval * 1.0001) for index in range(3 * limit.requests))


@pytest.mark.parametrize("limit", LIMITS)
def test_over_the_limit_it_costs_at_most_one_refill_step(limit: GlobalLimit) -> None:
    local = prelimit(limit)
    assert local is not None
    for seed in range(5):
        times = arrivals(limit, random.Random(seed).uniform(1.5, 4), 4000, seed)
        alone = Service(limit)
        without = sum(alone.decide(now) for now in times)
        bucket, service = EnvoyBucket(local, random.Random(seed).uniform(0, local.per)), Service(limit)
        admitted = sum(bucket.take(now) and service.decide(now) for now in times)
        allowance = without * 0.03 if limit.algorithm == "gcra" else local.requests + 1
        assert without - admitted <= allowance, (seed, without, admitted)


@pytest.mark.parametrize("limit", LIMITS)
def test_failing_open_an_envoy_admits_no_more_than_the_limit(limit: GlobalLimit) -> None:
    local = prelimit(limit)
    assert local is not None and local.burst is not None
    times = arrivals(limit, 3.0, 4000, 1)
    bucket = EnvoyBucket(local, 0.0)
    admitted = sum(bucket.take(now) for now in times)  # the service never answers: everything it passes goes on
    steps = times[-1] / local.per + 1
    assert admitted <= local.burst + steps * local.requests
    factor = PRELIMIT_GCRA_FACTOR if limit.algorithm == "gcra" else 1
    assert admitted <= (times[-1] / limit.per) * limit.requests * factor * 1.06 + local.burst


def test_no_prelimit_for_shadow_limits_or_when_switched_off() -> None:
    assert prelimit(GlobalLimit(requests=5, shadow=True)) is None
    assert prelimit(GlobalLimit(requests=5, prelimit=False)) is None
    huge = prelimit(GlobalLimit(requests=1_000_000_000, per=0.05))
    assert huge is not None and huge.burst is not None and huge.burst < 2**32
