"""Envoy and control plane failures: NACKs are reported with their object; restarts resync; traffic holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from xgate.config.load import parse_document
from xgate.controlplane import ControlPlane
from xgate.pipeline import compile_config
from xgate.sources.revision import revision_of
from xgate.testing import free_port, run_gateway, write_atomic
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration


async def test_rejected_resource_is_reported_with_its_object(make_config: Callable[..., str], work_dir: Path) -> None:
    """Validation should stop this; the test pushes past it to prove the NACK path reports what Envoy said."""
    port = free_port()
    config = make_config(port)
    async with (
        run_gateway(config, work_dir) as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        resources = compile_config(parse_document(config, "test")).resources
        routes = resources.route_config("routes/public")
        routes.virtual_hosts[0].routes[0].match.safe_regex.regex = "/(unclosed"
        gateway.plane.cache.update(resources, "bad-revision")

        async def rejected() -> bool:
            proxies = gateway.plane.report()["proxies"]
            return bool(proxies) and proxies[0]["types"]["RDS"]["rejection"] is not None

        await wait_for(rejected, 10, "Envoy to reject the route configuration")
        proxy = gateway.plane.report()["proxies"][0]
        rejection = proxy["types"]["RDS"]["rejection"]
        assert "missing )" in rejection["message"]
        assert rejection["objects"] == ["routes of listener public"]
        assert rejection["revision"] == "bad-revision"
        assert proxy["in_sync"] is False
        # Envoy keeps the last good routes.
        assert (await client.get("/healthz")).text == "ok"
        # The next good revision clears the rejection.
        fixed = config.replace("body: ok", "body: again")
        await gateway.apply(fixed)
        proxy = gateway.plane.report()["proxies"][0]
        assert proxy["types"]["RDS"]["rejection"] is None
        assert proxy["synced_revision"] == revision_of(fixed)


async def test_envoy_restart_resyncs(make_config: Callable[..., str], work_dir: Path) -> None:
    port = free_port()
    async with run_gateway(make_config(port), work_dir) as gateway:
        changed = make_config(port).replace("body: ok", "body: changed")
        await gateway.apply(changed)
        await gateway.envoys[0].stop()
        gateway.envoys.clear()
        await gateway.start_envoy(node_id="replacement")
        await gateway.wait_synced(revision_of(changed))
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).text == "changed"


async def test_controlplane_restart_keeps_traffic_and_resyncs(make_config: Callable[..., str], work_dir: Path) -> None:
    port = free_port()
    async with (
        run_gateway(make_config(port), work_dir) as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        await gateway.stop_controlplane()
        # The control plane is gone: Envoy serves on from what it has.
        outcomes = [(await client.get("/healthz")).status_code for _ in range(100)]
        assert outcomes == [200] * 100
        # A change made while it is down is picked up when it comes back, by a fresh process state.
        changed = make_config(port).replace("body: ok", "body: after-restart")
        assert gateway.config_path is not None
        write_atomic(gateway.config_path, changed)
        await asyncio.sleep(0.2)
        gateway.plane = ControlPlane()
        await gateway.start_controlplane()
        await gateway.wait_synced(revision_of(changed), timeout=15)
        assert (await client.get("/healthz")).text == "after-restart"
