"""The fleet's figures: which address the control plane reads, how Envoy's counters are named, and that a counter
which grew becomes a warning (against a small HTTP server standing in for Envoy's admin; the real thing is in
tests/integration/test_fail_open.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from xgate.telemetry.fleet import STATS_FILTER, FleetStats, Target, fail_open_parts, target_url


@pytest.mark.parametrize(
    ("peer", "addresses", "expected"),
    [
        ("ipv4:127.0.0.1:5000", {"admin": "127.0.0.1:9901"}, "http://127.0.0.1:9901"),
        ("ipv4:10.0.0.7:5000", {"admin": "127.0.0.1:9901"}, None),  # its loopback is not ours
        ("ipv4:10.0.0.7:5000", {"admin": "127.0.0.1:9901", "stats": "0.0.0.0:9902"}, "http://10.0.0.7:9902"),
        ("ipv6:[::1]:5000", {"stats": "[::]:9902"}, "http://[::1]:9902"),
        ("ipv4:10.0.0.7:5000", {"stats": "envoy-1.internal:9902"}, "http://envoy-1.internal:9902"),
        ("ipv4:10.0.0.7:5000", {}, None),
    ],
)
def test_which_address_is_read(peer: str, addresses: dict[str, str], expected: str | None) -> None:
    assert target_url(peer, addresses, ("stats", "admin")) == expected


def test_counter_names() -> None:
    assert fail_open_parts("http.public.ext_proc.failure_mode_allowed") == {
        "filter": "ext_proc", "scope": "listener public", "counter": "failure_mode_allowed",
    }  # fmt: skip
    assert fail_open_parts("cluster.upstream/my.app.ratelimit.error") == {
        "filter": "ratelimit", "scope": "upstream my.app", "counter": "error",
    }  # fmt: skip
    assert fail_open_parts("cluster.xgate-jwks/idp.upstream_rq_2xx") is None


@pytest.fixture
async def fake_envoy() -> AsyncIterator[tuple[str, dict[str, int], list[str]]]:
    counters = {"http.public.ext_proc.failure_mode_allowed": 0, "cluster.xgate-jwks/idp.upstream_rq_2xx": 1}
    filters: list[str] = []

    async def stats(request: web.Request) -> web.Response:
        filters.append(request.query["filter"])
        return web.json_response({"stats": [{"name": k, "value": v} for k, v in counters.items()]})

    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", counters, filters
    finally:
        await runner.cleanup()


async def test_a_counter_that_grew_is_a_warning(fake_envoy: tuple[str, dict[str, int], list[str]]) -> None:
    url, counters, filters = fake_envoy
    fleet = FleetStats(lambda: [Target("envoy", "e1", url)], window=60)
    async with aiohttp.ClientSession() as session:
        await fleet.poll(session)
        assert fleet.report()["warnings"] == []  # the first reading is the baseline
        counters["http.public.ext_proc.failure_mode_allowed"] = 7
        counters["cluster.xgate-jwks/idp.upstream_rq_5xx"] = 2
        await fleet.poll(session)
    assert filters == [STATS_FILTER, STATS_FILTER]  # one filtered read per poll
    report = fleet.report()
    (consumer,) = report["consumers"]
    assert consumer["fail_open"] == [
        {"filter": "ext_proc", "scope": "listener public", "counter": "failure_mode_allowed", "total": 7, "recent": 7}
    ]
    assert consumer["jwks"][0]["provider"] == "idp" and consumer["jwks"][0]["fetch_failed"] == 2
    assert report["warnings"] == [
        "envoy e1: 7 requests passed undyed: the dyeing service failed or was too slow (listener public, last 1 min; "
        "Envoy's ext_proc.failure_mode_allowed)",
        "envoy e1: jwt provider idp: 2 JWKS fetches failed (last 1 min)",
    ]
    metrics = {(s.name, tuple(s.labels.values())): s.value for m in fleet.families() for s in m.samples}
    assert metrics[("xgate_envoy_fail_open_total", ("e1", "ext_proc", "listener public", "failure_mode_allowed"))] == 7
    assert metrics[("xgate_fleet_stats_up", ("envoy", "e1"))] == 1


async def test_an_unreadable_consumer_is_a_warning_not_an_error() -> None:
    fleet = FleetStats(lambda: [Target("envoy", "e1", "http://127.0.0.1:9")], timeout=1)
    async with aiohttp.ClientSession() as session:
        await fleet.poll(session)
    (warning,) = fleet.report()["warnings"]
    assert warning.startswith("envoy e1: its figures could not be read at http://127.0.0.1:9 (")
