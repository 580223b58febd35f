"""The servicer on the in-memory backend: matching, statuses and headers, shadow mode, failure modes, metrics."""

from __future__ import annotations

import asyncio
import time

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_rl_v3
from envoy.service.ratelimit.v3 import rls_pb2 as rls_v3

from xgate.ratelimit import Decision, FailureMode, Limit, LimitTable, MemoryBackend, Rate, RateLimitService
from xgate.ratelimit.limits import Pattern

OK = rls_v3.RateLimitResponse.OK
OVER = rls_v3.RateLimitResponse.OVER_LIMIT


def request(domain: str, *descriptors: dict[str, str], hits: int = 0) -> rls_v3.RateLimitRequest:
    built = rls_v3.RateLimitRequest(domain=domain, hits_addend=hits)
    for entries in descriptors:
        descriptor = built.descriptors.add()
        for key, value in entries.items():
            descriptor.entries.add(key=key, value=value)
    return built


def headers(response: rls_v3.RateLimitResponse) -> dict[str, str]:
    return {header.key: header.value for header in response.response_headers_to_add}


def service(limits: dict[tuple[str, tuple[tuple[str, str | None], ...]], Limit], **kwargs: object) -> RateLimitService:
    return RateLimitService(LimitTable(limits), MemoryBackend(), **kwargs)  # type: ignore[arg-type]


PER_IP = ("api", (("client_ip", None),))


async def test_wildcard_gives_each_value_its_own_bucket() -> None:
    svc = service({PER_IP: Limit(2, 60, name="per-ip")})
    codes = [(await svc.ShouldRateLimit(request("api", {"client_ip": "10.0.0.1"}))).overall_code for _ in range(3)]
    assert codes == [OK, OK, OVER]
    assert (await svc.ShouldRateLimit(request("api", {"client_ip": "10.0.0.2"}))).overall_code == OK
    assert svc.metrics()["per-ip"] == {
        "allowed": 3, "limited": 1, "near_limit": 1, "shadow_limited": 0, "errors": 0,
    }  # fmt: skip


async def test_exact_pattern_beats_wildcard_and_unknown_descriptors_pass() -> None:
    vip = ("api", (("client_ip", "10.0.0.9"),))
    svc = service({PER_IP: Limit(1, 60), vip: Limit(100, 60, name="vip")})
    for _ in range(5):
        assert (await svc.ShouldRateLimit(request("api", {"client_ip": "10.0.0.9"}))).overall_code == OK
    # Another domain, other keys, more entries: no limit configured -> OK, a bare status.
    response = await svc.ShouldRateLimit(request("other", {"client_ip": "1"}, {"path": "/x"}))
    assert response.overall_code == OK
    assert [status.code for status in response.statuses] == [OK, OK]
    assert not response.statuses[0].HasField("current_limit")
    assert not response.response_headers_to_add
    assert set(svc.metrics()) == {"vip"}
    assert svc.metrics()["vip"]["allowed"] == 5


async def test_statuses_and_headers_show_the_most_restrictive_descriptor() -> None:
    route = ("api", (("route", "orders"),))
    svc = service({PER_IP: Limit(100, 60, name="per-ip"), route: Limit(3, 1.0, name="orders")})
    req = request("api", {"client_ip": "1.2.3.4"}, {"route": "orders"})
    response = await svc.ShouldRateLimit(req)
    assert response.overall_code == OK
    per_ip, orders = response.statuses
    assert (per_ip.current_limit.requests_per_unit, per_ip.current_limit.unit) == (
        100,
        rls_v3.RateLimitResponse.RateLimit.MINUTE,
    )
    assert (orders.current_limit.requests_per_unit, orders.current_limit.unit) == (
        3,
        rls_v3.RateLimitResponse.RateLimit.SECOND,
    )
    assert orders.current_limit.name == "orders"
    assert (per_ip.limit_remaining, orders.limit_remaining) == (99, 2)
    assert orders.duration_until_reset.ToMilliseconds() == pytest.approx(333, abs=2)
    assert headers(response) == {"x-ratelimit-limit": "3", "x-ratelimit-remaining": "2", "x-ratelimit-reset": "1"}
    await svc.ShouldRateLimit(req)
    await svc.ShouldRateLimit(req)
    over = await svc.ShouldRateLimit(req)
    assert over.overall_code == OVER
    assert [status.code for status in over.statuses] == [OK, OVER]
    assert headers(over)["x-ratelimit-remaining"] == "0"


async def test_unit_outside_envoys_units_is_rescaled() -> None:
    svc = service({PER_IP: Limit(5, 10.0)})  # 5 per 10 s -> 30 per minute
    status = (await svc.ShouldRateLimit(request("api", {"client_ip": "a"}))).statuses[0]
    assert (status.current_limit.requests_per_unit, status.current_limit.unit) == (
        30,
        rls_v3.RateLimitResponse.RateLimit.MINUTE,
    )


async def test_hits_addend_from_request_and_descriptor() -> None:
    svc = service({PER_IP: Limit(10, 60)})
    assert (await svc.ShouldRateLimit(request("api", {"client_ip": "a"}, hits=8))).statuses[0].limit_remaining == 2
    req = request("api", {"client_ip": "a"}, hits=8)
    req.descriptors[0].hits_addend.value = 2  # the descriptor's own value wins
    response = await svc.ShouldRateLimit(req)
    assert (response.overall_code, response.statuses[0].limit_remaining) == (OK, 0)
    assert (await svc.ShouldRateLimit(request("api", {"client_ip": "a"}))).overall_code == OVER


async def test_shadow_mode_counts_but_allows_and_hides_headers() -> None:
    svc = service({PER_IP: Limit(1, 60, shadow=True, name="trial")})
    for _ in range(3):
        response = await svc.ShouldRateLimit(request("api", {"client_ip": "a"}))
        assert response.overall_code == OK
        assert response.statuses[0].code == OK
        assert not response.response_headers_to_add
    assert svc.metrics()["trial"] == {"allowed": 1, "limited": 0, "near_limit": 1, "shadow_limited": 2, "errors": 0}


async def test_set_limits_applies_without_restart() -> None:
    svc = service({PER_IP: Limit(1, 60)})
    req = request("api", {"client_ip": "a"})
    assert [(await svc.ShouldRateLimit(req)).overall_code for _ in range(2)] == [OK, OVER]
    svc.set_limits(LimitTable({PER_IP: Limit(5, 60)}))  # same key: the 1 hit taken so far still counts
    assert [(await svc.ShouldRateLimit(req)).overall_code for _ in range(5)] == [OK, OK, OK, OK, OVER]
    svc.set_limits(LimitTable())
    assert (await svc.ShouldRateLimit(req)).overall_code == OK


class BrokenBackend:
    def __init__(self, delay: float | None = None) -> None:
        self.delay = delay

    async def decide(self, key: str, rate: Rate, hits: int = 1) -> Decision:
        if self.delay is None:
            raise ConnectionError("connection refused")
        await asyncio.sleep(self.delay)
        return Decision(True, rate.requests, rate.requests, 0.0)

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(("mode", "code"), [("open", OK), ("closed", OVER)])
@pytest.mark.parametrize("delay", [None, 5.0], ids=["refused", "slow"])
async def test_backend_failure_follows_failure_mode_within_the_timeout(
    mode: FailureMode, code: int, delay: float | None
) -> None:
    svc = RateLimitService(
        LimitTable({PER_IP: Limit(1, 60, name="per-ip")}),
        BrokenBackend(delay),
        failure_mode=mode,
        timeout=0.05,
    )
    started = time.monotonic()
    response = await svc.ShouldRateLimit(request("api", {"client_ip": "a"}, {"other": "x"}))
    assert time.monotonic() - started < 0.5
    assert response.overall_code == code
    assert [status.code for status in response.statuses] == [code, OK]  # the unlimited descriptor stays OK
    assert svc.metrics()["per-ip"]["errors"] == 1


async def test_a_bug_answers_by_failure_mode_not_a_grpc_error() -> None:
    svc = service({PER_IP: Limit(1, 60)}, failure_mode="closed")
    svc.set_limits(None)  # type: ignore[arg-type]
    response = await svc.ShouldRateLimit(request("api", {"client_ip": "a"}))
    assert response.overall_code == OVER
    assert svc.metrics()["(internal)"]["errors"] == 1


def test_limit_table_rejects_empty_names() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        LimitTable({("", (("k", None),)): Limit(1, 1)})
    with pytest.raises(ValueError, match="failure_mode"):
        RateLimitService(LimitTable(), MemoryBackend(), failure_mode="maybe")  # type: ignore[arg-type]


def test_common_descriptor_proto_is_what_envoy_sends() -> None:
    # RateLimitRequest.descriptors are envoy.extensions.common.ratelimit.v3 descriptors.
    assert rls_v3.RateLimitRequest().descriptors.add().DESCRIPTOR is common_rl_v3.RateLimitDescriptor.DESCRIPTOR


def test_exact_patterns_are_found_by_their_entries_among_many_and_unnamed_ones_labelled_by_pattern() -> None:
    # One exact limit per route, as a config makes them: each is found by its own entries (not by trying the
    # others), an unnamed one is labelled by its pattern, and a wildcard of the same keys still takes the rest.
    limits: dict[Pattern, Limit] = {
        ("xgate", (("xgate_route", f"svc-{n}"),)): Limit(n + 1, 60, name=f"svc-{n}") for n in range(5000)
    }
    limits[("xgate", (("xgate_route", "plain"),))] = Limit(7, 60)
    limits[("xgate", (("xgate_route", None),))] = Limit(9, 60, name="any-route")
    table = LimitTable(limits)
    last = table.match("xgate", [("xgate_route", "svc-4999")])
    assert last is not None and (last.name, last.limit.requests) == ("svc-4999", 5000)
    plain = table.match("xgate", [("xgate_route", "plain")])
    assert plain is not None and (plain.name, plain.limit.requests) == ("xgate|xgate_route=plain", 7)
    other = table.match("xgate", [("xgate_route", "svc-x")])
    assert other is not None and (other.name, other.key) == (
        "any-route",
        "token_bucket:'xgate':(('xgate_route', 'svc-x'),)",
    )
    assert table.match("xgate", [("other", "svc-1")]) is None
    assert table.match("elsewhere", [("xgate_route", "svc-1")]) is None
