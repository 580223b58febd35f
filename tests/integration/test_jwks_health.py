"""JWKS health per provider in status and metrics, on both paths, against a real HTTPS JWKS endpoint: the authz
service's fetches, failures, last good fetch and key ids, Envoy's fetches through the provider's cluster; a
failing endpoint becomes a warning in `xgate status` while the last good keys keep verifying."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration import test_jwks_uri
from tests.integration.test_jwks_uri import JwksServer, config, jwks, status

from xgate.demo.upstream import DemoUpstream
from xgate.testing import free_port, run_authz_service, run_cli, run_gateway, scrape
from xgate.testing.gateway import Gateway, wait_for

pytestmark = pytest.mark.integration
jwks_server = test_jwks_uri.jwks_server  # its HTTPS JWKS endpoint, the fixture


def _jwks(gateway: Gateway, kind: str) -> list[dict[str, Any]]:
    consumers = gateway.plane.report().get("fleet", {}).get("consumers", [])
    return [item for consumer in consumers if consumer["kind"] == kind for item in consumer["jwks"]]


def _warned(gateway: Gateway, text: str) -> bool:
    return any(text in warning for warning in gateway.plane.report().get("fleet", {}).get("warnings", []))


async def test_python_path_jwks_health(
    jwks_server: tuple[JwksServer, Path], upstreams: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    server, ca_file = jwks_server
    server.jwks = jwks("k1", "k2")
    port, authz = free_port(), free_port()
    text = config(port, upstreams["v1"].port, authz, "python", server.port, ca_file, refresh="1s")
    async with (
        run_gateway(text, tmp_path / "gw") as gateway,
        run_authz_service(gateway.xds_port, authz) as service,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        assert gateway.plane.fleet is not None
        gateway.plane.fleet.interval = 0.3
        gateway.plane.fleet.poke()
        await wait_for(lambda: [p.get("kids") for p in _jwks(gateway, "authz")] == [["k1", "k2"]], 10, "key ids")
        (health,) = _jwks(gateway, "authz")
        assert health["provider"] == "remote" and health["fetch_success"] >= 1 and health["failing"] is False
        scraped = await scrape(service.metrics_url)
        assert scraped['xgate_authz_jwks_keys{provider="remote"}'] == 2
        server.failing = True  # refreshed every second: the next fetch fails
        await wait_for(lambda: _warned(gateway, "jwt provider remote: JWKS fetch failing (HTTP 500)"), 10, "a warning")
        assert await status(client, "k1") == 200  # the last good keys keep verifying
        out = (await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")).out
        assert "jwt provider remote (authz " in out and "FAILING: HTTP 500" in out, out
        assert "keeping the last good keys (k1, k2)" in out
        metrics = await scrape(f"http://127.0.0.1:{gateway.status_port}/metrics")
        failed = [value for key, value in metrics.items() if key.startswith("xgate_jwks_fetches_total{") and
                  'outcome="failed"' in key and 'kind="authz"' in key]  # fmt: skip
        assert failed and failed[0] >= 1


async def test_native_path_jwks_health(
    jwks_server: tuple[JwksServer, Path], upstreams: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    server, ca_file = jwks_server
    server.jwks = jwks("k1")
    port, authz = free_port(), free_port()
    text = config(port, upstreams["v1"].port, authz, "native", server.port, ca_file, refresh="1s")
    async with (
        run_gateway(text, tmp_path / "gw", envoys=0) as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        assert gateway.plane.fleet is not None
        gateway.plane.fleet.interval = 0.3
        gateway.plane.fleet.poke()
        await gateway.start_envoy(stats_port=free_port())
        await wait_for(lambda: [p["fetch_success"] > 0 for p in _jwks(gateway, "envoy")] == [True], 10, "a fetch")
        assert await status(client, "k1") == 200
        server.failing = True
        await wait_for(lambda: _warned(gateway, "jwt provider remote: "), 10, "a JWKS warning from Envoy")
        (health,) = _jwks(gateway, "envoy")
        assert health["fetch_failed"] >= 1 and health["last_success_seen"] is not None
        assert await status(client, "k1") == 200
        out = (await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")).out
        assert "jwt provider remote (envoy test-envoy): " in out and "JWKS fetches failed" in out, out
