"""Config changes while traffic flows: live in milliseconds, no request failed, no connection dropped."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx
import pytest

from xgate.testing import free_port, run_gateway
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration


async def _hammer(url: str, stop: asyncio.Event, results: Counter[str]) -> None:
    """One keep-alive client requesting as fast as it can until `stop`; every outcome is counted."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while not stop.is_set():
            try:
                response = await client.get("/stable")
                results[f"{response.status_code} {response.json()['upstream']}"] += 1
            except (httpx.HTTPError, ValueError) as exc:
                results[f"error {type(exc).__name__}"] += 1


async def test_changes_under_load_lose_no_request_and_keep_listeners(
    make_config: Callable[..., str], work_dir: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with run_gateway(make_config(port), work_dir) as gateway:
        results: Counter[str] = Counter()
        stop = asyncio.Event()
        clients = [asyncio.create_task(_hammer(url, stop, results)) for _ in range(4)]
        async with httpx.AsyncClient(base_url=url) as probe:
            for i in range(15):
                # Add a route, point it at the other upstream, then remove it again.
                added = f"""
  - name: new-{i}
    match: {{path: {{prefix: /new-{i}}}}}
    upstream: {"v2" if i % 2 else "v1"}
"""
                await gateway.apply(make_config(port, added))
                assert (await probe.get(f"/new-{i}")).json()["upstream"] == ("v2" if i % 2 else "v1")
                await gateway.apply(make_config(port))
                assert (await probe.get(f"/new-{i}")).json()["upstream"] == "v1"  # default route again
        stop.set()
        await asyncio.gather(*clients)
        assert set(results) == {"200 v1"}, results
        assert sum(results.values()) > 100
        # Route changes travel over RDS only: the listener was never rebuilt, so no connection was drained.
        assert await gateway.envoys[0].stat("listener_manager.listener_modified") == 0
        assert await gateway.envoys[0].stat("listener_manager.total_listeners_draining") == 0


async def test_listener_changes_under_load_lose_no_request(make_config: Callable[..., str], work_dir: Path) -> None:
    """A change of the listener itself (here its stream_idle_timeout) rebuilds it, and Envoy lets go of the old
    one's connections: each gets `Connection: close` on its next response (xgate starts Envoy with
    `--drain-strategy immediate`), so a keep-alive client reconnects between two requests instead of losing
    the one in flight when the drain time ends (Envoy's default strategy lost 16-128 per 17 changes under wrk)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def config(timeout: int) -> str:
        listener = f"    port: {port}\n"
        return make_config(port).replace(listener, f"{listener}    stream_idle_timeout: {timeout}s\n")

    async with run_gateway(config(300), work_dir) as gateway:
        envoy = gateway.envoys[0]
        results: Counter[str] = Counter()
        stop = asyncio.Event()
        clients = [asyncio.create_task(_hammer(url, stop, results)) for _ in range(8)]
        changes = 6
        for i in range(changes):
            await gateway.apply(config(301 + i))

            async def drained() -> bool:
                return await envoy.stat("listener_manager.total_filter_chains_draining") == 0

            await wait_for(drained, 10, "the old filter chains to drain")  # the closes happen at the drain's end
        stop.set()
        await asyncio.gather(*clients)
        assert set(results) == {"200 v1"}, results
        assert sum(results.values()) > 100
        assert await envoy.stat("listener_manager.listener_modified") == changes  # each change did rebuild it
        assert await envoy.stat("http.public.downstream_cx_drain_close") >= changes  # and the clients were told


async def test_endpoint_change_does_not_rebuild_cluster(make_config: Callable[..., str], work_dir: Path) -> None:
    port = free_port()
    async with run_gateway(make_config(port), work_dir) as gateway, httpx.AsyncClient() as client:
        original = make_config(port)
        v1_port = original.split('endpoints: ["127.0.0.1:')[1].split('"')[0]
        v2_port = original.split('endpoints: ["127.0.0.1:')[2].split('"')[0]
        # Point upstream v1 at v2's address: an endpoint change, which must go over EDS alone.
        await gateway.apply(original.replace(f"127.0.0.1:{v1_port}", f"127.0.0.1:{v2_port}", 1))
        assert (await client.get(f"http://127.0.0.1:{port}/x")).json()["upstream"] == "v2"
        assert await gateway.envoys[0].stat("cluster_manager.cluster_modified") == 0


async def test_websocket_survives_config_changes(make_config: Callable[..., str], work_dir: Path) -> None:
    port = free_port()
    ws_route = """
  - name: ws
    match: {path: {exact: /ws}}
    upstream: v1
    websocket: true
"""
    async with (
        run_gateway(make_config(port, ws_route), work_dir) as gateway,
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}/ws") as socket,
    ):
        for i in range(5):
            await socket.send_str(f"hello {i}")
            assert (await socket.receive_str(timeout=5)) == f"v1:hello {i}"
            extra = (
                ws_route
                + f"""
  - name: churn-{i}
    match: {{path: {{prefix: /churn-{i}}}}}
    direct_response: {{status: 200, body: "{i}"}}
"""
            )
            await gateway.apply(make_config(port, extra))
        await socket.send_str("still here")
        assert (await socket.receive_str(timeout=5)) == "v1:still here"
        assert not socket.closed


async def test_broken_saves_keep_the_last_good_config(make_config: Callable[..., str], work_dir: Path) -> None:
    port = free_port()
    good = make_config(port)
    broken = {
        "bad YAML": (good + "\n  - name: [unclosed\n", "not valid YAML"),
        "unknown field": (good.replace("name: default", "name: default\n    upstrem: v1"), "unknown field"),
        "missing upstream": (
            good.replace("upstream: v2\n", "upstream: v9\n"),
            "upstream 'v9' does not exist",
        ),
        "invalid regex": (good.replace("{exact: /healthz}", '{regex: "/(a"}'), "invalid RE2 regex"),
        "port clash": (
            good.replace("upstreams:", f"  - name: other\n    port: {port}\nupstreams:"),
            f"port {port} is already used",
        ),
    }
    async with (
        run_gateway(good, work_dir) as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        applied = gateway.plane.state.applied
        assert gateway.config_path is not None
        for label, (text, expected) in broken.items():
            gateway.config_path.write_text(text)
            await gateway.wait_for_rejection(expected)
            state = gateway.plane.state
            assert state.applied == applied, label
            issues = "\n".join(state.issues)
            assert str(gateway.config_path) in issues, (label, issues)
            assert (await client.get("/healthz")).status_code == 200, label
            assert (await client.get("/x", headers={"x-version": "v2"})).json()["upstream"] == "v2", label
        # Fixing the file applies it and clears the error.
        fixed = good.replace("body: ok", "body: fixed")
        await gateway.apply(fixed)
        assert gateway.plane.state.issues == []
        assert (await client.get("/healthz")).text == "fixed"
