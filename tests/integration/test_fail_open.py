"""The documented fail-open paths, made visible: with the dyeing, rate-limit and authz services stopped, a real
Envoy lets requests through undyed, unlimited and unchecked (as configured), its counters move, the control plane
reads them through the Envoy's stats listener, and `xgate status` warns; Prometheus reads Envoy's stats there
without the admin port, which serves nothing else."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest

from xgate.demo.upstream import DemoUpstream
from xgate.testing import (
    free_port,
    run_authz_service,
    run_cli,
    run_dyeing_service,
    run_gateway,
    run_ratelimit_service,
    scrape,
)
from xgate.testing.gateway import Gateway, wait_for

pytestmark = pytest.mark.integration


def config(ports: dict[str, int], upstream: int) -> str:
    return f"""
plugins:
  dyeing:
    mode: ext_proc  # the service decides (a sticky rule alone would run in Envoy's Lua filter)
    service: "127.0.0.1:{ports["dyeing"]}"
    rules: [{{stage: canary, sticky: {{percent: 100, key: {{header: x-user}}}}}}]
  policy:
    service: "127.0.0.1:{ports["authz"]}"
    policies: {{open: "fail_open_policies:allow"}}
    failure_mode: open
  rate_limit: {{service: "127.0.0.1:{ports["ratelimit"]}", timeout: 200ms, failure_mode: open}}
listeners: [{{name: public, address: 127.0.0.1, port: {ports["listener"]}}}]
upstreams: [{{name: app, endpoints: ["127.0.0.1:{upstream}"]}}]
routes:
  - {{name: dyed, match: {{path: {{prefix: /dyed}}}}, upstream: app}}
  - {{name: guarded, match: {{path: {{prefix: /guarded}}}}, upstream: app,
      plugins: {{policy: {{name: open}}, dyeing: false}}}}
  - {{name: limited, match: {{path: {{prefix: /limited}}}}, upstream: app,
      plugins: {{dyeing: false, rate_limit: {{global: {{requests: 1000, per: 1h}}}}}}}}
"""


def _warnings(gateway: Gateway) -> list[str]:
    return list(gateway.plane.report().get("fleet", {}).get("warnings", []))


async def test_fail_open_counters_move_when_the_services_stop_and_status_warns(
    upstreams: dict[str, DemoUpstream], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fail_open_policies.py").write_text(
        "from xgate.authz import Allow\ndef allow(r, c):\n    return Allow()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ports = {name: free_port() for name in ("listener", "authz", "dyeing", "ratelimit", "stats")}
    async with (
        run_gateway(config(ports, upstreams["v1"].port), tmp_path / "gw", envoys=0) as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['listener']}") as client,
    ):
        assert gateway.plane.fleet is not None
        gateway.plane.fleet.interval = 0.3
        gateway.plane.fleet.poke()
        await gateway.start_envoy(stats_port=ports["stats"])
        await gateway.wait_synced(gateway.plane.state.applied or "")
        async with contextlib.AsyncExitStack() as services:
            for run, name in ((run_authz_service, "authz"), (run_dyeing_service, "dyeing"),
                              (run_ratelimit_service, "ratelimit")):  # fmt: skip
                await services.enter_async_context(run(gateway.xds_port, ports[name]))
            dyed = await client.get("/dyed", headers={"x-user": "ada"})
            assert dyed.json()["headers"].get("x-xgate-stage") == "canary"
            await wait_for(lambda: _read(gateway), 10, "a first reading of Envoy's counters")
            assert _warnings(gateway) == []
        # Every service is gone: Envoy takes the open paths, as configured.
        for _ in range(5):
            assert "x-xgate-stage" not in (await client.get("/dyed", headers={"x-user": "ada"})).json()["headers"]
            assert (await client.get("/guarded")).status_code == 200
            assert (await client.get("/limited")).status_code == 200
        expected = (
            "requests passed undyed: the dyeing service failed or was too slow (listener public",
            "requests let through without authz: the authz service failed (upstream app",
            "requests not rate limited: the rate-limit service failed (upstream app",
        )
        await wait_for(
            lambda: all(any(text in warning for warning in _warnings(gateway)) for text in expected),
            15,
            "a warning for each fail-open path",
        )
        status = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")
        assert "WARNINGS from the fleet" in status.out, status.out
        for text in expected:
            (line,) = [line for line in status.out.splitlines() if text in line]
            assert line.strip().startswith("envoy test-envoy: 5 "), line
        scraped = await scrape(f"http://127.0.0.1:{gateway.status_port}/metrics")
        key = 'xgate_envoy_fail_open_total{counter="failure_mode_allowed",filter="ext_proc",node="test-envoy",'
        assert scraped[key + 'scope="listener public"}'] == 5
        await _only_stats_on_the_stats_port(ports["stats"])


def _read(gateway: Gateway) -> bool:
    consumers = gateway.plane.report().get("fleet", {}).get("consumers", [])
    return any(c["kind"] == "envoy" and c["read_at"] and c["error"] is None and c["fail_open"] for c in consumers)


async def _only_stats_on_the_stats_port(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as stats:
        prometheus = await stats.get("/stats/prometheus")
        assert prometheus.status_code == 200 and "envoy_http_downstream_rq_total" in prometheus.text
        assert (await stats.get("/stats", params={"filter": "ext_proc"})).status_code == 200
        for method, path in (("GET", "/ready"), ("POST", "/quitquitquit"), ("POST", "/stats"), ("GET", "/config_dump")):
            assert (await stats.request(method, path)).status_code == 404, (method, path)
