"""Token bucket and GCRA arithmetic through the in-memory backend, on a fake clock."""

from __future__ import annotations

import pytest

from xgate.ratelimit import Decision, MemoryBackend, Rate


class FakeClock:
    """Seconds, moved by hand. Starts near today's epoch: Redis TIME in microseconds is that large, and the
    float rounding at that magnitude is what the algorithms must tolerate."""

    def __init__(self, start: float = 1.8e9) -> None:
        self.start = start
        self.elapsed = 0.0  # kept apart so that many small steps do not pile up rounding errors at 1.8e9

    def __call__(self) -> float:
        return self.start + self.elapsed

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> MemoryBackend:
    return MemoryBackend(clock)


def run(backend: MemoryBackend, rate: Rate, count: int, key: str = "k", hits: int = 1) -> list[Decision]:
    return [backend.decide_now(key, rate, hits) for _ in range(count)]


def allowed(decisions: list[Decision]) -> int:
    return sum(decision.allowed for decision in decisions)


def test_token_bucket_allows_its_capacity_then_refills_at_the_rate(backend: MemoryBackend, clock: FakeClock) -> None:
    rate = Rate(10, 1.0)
    assert allowed(run(backend, rate, 15)) == 10
    clock.advance(0.1)
    assert allowed(run(backend, rate, 3)) == 1
    clock.advance(0.5)
    assert allowed(run(backend, rate, 10)) == 5
    clock.advance(60)  # never more than the capacity, however long the idle period
    assert allowed(run(backend, rate, 30)) == 10


def test_token_bucket_burst_sets_the_capacity(backend: MemoryBackend, clock: FakeClock) -> None:
    rate = Rate(10, 1.0, burst=25)
    assert allowed(run(backend, rate, 40)) == 25
    clock.advance(1.0)
    assert allowed(run(backend, rate, 40)) == 10


def test_gcra_lets_no_burst_pass_after_idle(backend: MemoryBackend, clock: FakeClock) -> None:
    token_bucket, gcra = Rate(10, 1.0), Rate(10, 1.0, "gcra")
    clock.advance(3600)
    assert allowed(run(backend, token_bucket, 10, key="tb")) == 10
    assert allowed(run(backend, gcra, 10, key="gcra")) == 1
    # Burst 1 means the same as 0: one at a time.
    assert allowed(run(backend, Rate(10, 1.0, "gcra", burst=1), 10, key="gcra1")) == 1


def test_gcra_tolerance_is_burst_requests_back_to_back(backend: MemoryBackend, clock: FakeClock) -> None:
    rate = Rate(10, 1.0, "gcra", burst=4)
    assert allowed(run(backend, rate, 10)) == 4
    clock.advance(0.1)  # one emission interval frees one slot, not more
    assert allowed(run(backend, rate, 10)) == 1
    clock.advance(3600)
    assert allowed(run(backend, rate, 10)) == 4


def test_gcra_passes_requests_spaced_by_the_interval(backend: MemoryBackend, clock: FakeClock) -> None:
    rate = Rate(3, 1.0, "gcra")  # T = 1/3 s: not a round number of microseconds
    for _ in range(300):
        assert backend.decide_now("k", rate).allowed
        assert not backend.decide_now("k", rate).allowed
        clock.advance(1 / 3)


def test_rates_hold_over_time_under_3x_load(backend: MemoryBackend, clock: FakeClock) -> None:
    for algorithm in ("token_bucket", "gcra"):
        rate = Rate(20, 1.0, algorithm)
        passed = 0
        for _ in range(600):  # 10 s of 60 requests per second
            passed += backend.decide_now(algorithm, rate).allowed
            clock.advance(1 / 60)
        assert rate.capacity + 20 * 10 - 1 <= passed <= rate.capacity + 20 * 10, algorithm


def test_hits_addend(backend: MemoryBackend, clock: FakeClock) -> None:
    rate = Rate(10, 1.0)
    assert backend.decide_now("k", rate, hits=4) == Decision(True, 10, 6, 0.4)
    assert backend.decide_now("k", rate, hits=7) == Decision(False, 10, 6, 0.1)  # needs one more token
    assert backend.decide_now("k", rate, hits=0) == Decision(True, 10, 6, 0.4)  # looks, takes nothing
    assert backend.decide_now("k", rate, hits=6).allowed
    assert not backend.decide_now("k", rate, hits=11).allowed  # more than the bucket holds: never
    clock.advance(3600)
    assert not backend.decide_now("k", rate, hits=11).allowed

    gcra = Rate(10, 1.0, "gcra", burst=5)
    assert backend.decide_now("g", gcra, hits=5).allowed
    denied = backend.decide_now("g", gcra, hits=2)
    assert not denied.allowed
    assert denied.reset_seconds == pytest.approx(0.2)
    clock.advance(0.2)
    assert backend.decide_now("g", gcra, hits=2).allowed


def test_token_bucket_remaining_and_reset(backend: MemoryBackend, clock: FakeClock) -> None:
    rate = Rate(10, 1.0)
    decisions = run(backend, rate, 3)
    assert [d.remaining for d in decisions] == [9, 8, 7]
    assert decisions[-1].reset_seconds == pytest.approx(0.3)  # until the bucket is full again
    run(backend, rate, 7)
    denied = backend.decide_now("k", rate)
    assert (denied.allowed, denied.remaining) == (False, 0)
    assert denied.reset_seconds == pytest.approx(0.1)  # until the next token
    clock.advance(0.25)
    assert backend.decide_now("k", rate) == Decision(True, 10, 1, 0.85)


def test_gcra_remaining_and_reset(backend: MemoryBackend, clock: FakeClock) -> None:
    rate = Rate(10, 1.0, "gcra")
    first = backend.decide_now("k", rate)
    assert first == Decision(True, 10, 9, 0.1)  # 9 more fit into the next second at the pace
    denied = backend.decide_now("k", rate)
    assert (denied.allowed, denied.remaining) == (False, 0)
    assert denied.reset_seconds == pytest.approx(0.1)
    clock.advance(0.04)
    assert backend.decide_now("k", rate).reset_seconds == pytest.approx(0.06)
    # A client at exactly the rate keeps 9 of 10 remaining: it is not near its limit.
    for _ in range(20):
        clock.advance(0.1)
        assert backend.decide_now("k", rate).remaining == 9


def test_keys_are_independent(backend: MemoryBackend) -> None:
    rate = Rate(2, 1.0)
    assert allowed(run(backend, rate, 5, key="a")) == 2
    assert allowed(run(backend, rate, 5, key="b")) == 2


def test_idle_keys_are_forgotten(backend: MemoryBackend, clock: FakeClock) -> None:
    rate = Rate(10, 1.0)
    for index in range(5000):
        backend.decide_now(f"ip-{index}", rate)
    assert len(backend) == 5000
    clock.advance(1.0)  # every bucket is full again: nothing worth keeping
    run(backend, rate, 6100, key="busy")
    assert len(backend) < 10


def test_rate_validation() -> None:
    with pytest.raises(ValueError, match="at least 1 request"):
        Rate(0, 1.0)
    with pytest.raises(ValueError, match="unit must be positive"):
        Rate(1, 0)
    with pytest.raises(ValueError, match="burst"):
        Rate(1, 1, burst=-1)
    with pytest.raises(ValueError, match="unknown algorithm"):
        Rate(1, 1, "fixed_window")  # type: ignore[arg-type]
