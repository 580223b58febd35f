"""A change that would leave Envoy serving nothing is held back, from a file or from etcd: while a save passes
through an empty file, or every route is deleted from etcd, no request fails and no listener goes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from xgate.cli.etcdstore import execute, plan_apply, read_stored
from xgate.config.load import parse_document
from xgate.proxy.process import EnvoyProcess
from xgate.sources.etcd.client import EtcdClient, EtcdSettings
from xgate.sources.revision import revision_of
from xgate.testing import free_port, run_cli, run_etcd, run_gateway
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration


async def stat(envoy: EnvoyProcess, name: str) -> int:
    status, body = await envoy.admin_get(f"/stats?filter=^{name}$")
    assert status == 200, body
    for line in body.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    raise AssertionError(f"stat {name} not found in {body!r}")


async def hammer(url: str, stop: asyncio.Event, results: Counter[str]) -> None:
    """One client requesting until `stop`, each request on a new connection (as new users come: a draining
    listener still serves the connections it has); every outcome counted as "STATUS BODY" or "error TYPE"."""
    async with httpx.AsyncClient(timeout=5, headers={"connection": "close"}) as client:
        while not stop.is_set():
            try:
                response = await client.get(url)
                results[f"{response.status_code} {response.text}"] += 1
            except httpx.HTTPError as exc:
                results[f"error {type(exc).__name__}"] += 1


async def more_requests(results: Counter[str], count: int) -> None:
    """Wait until `count` more requests were answered (or failed): traffic kept flowing past the event."""
    target = sum(results.values()) + count
    await wait_for(lambda: sum(results.values()) >= target, 20, f"{count} more requests")


async def test_rm_then_slow_write_holds_the_empty_file_back(
    make_config: Callable[..., str], work_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`rm gateway.yaml; (sleep 0.3; cat good.yaml) > gateway.yaml`: the file is missing, then empty for 0.3 s.
    That used to serve an empty revision: listener_removed +1, connections refused."""
    caplog.set_level(logging.INFO, logger="xgate")
    port = free_port()
    good = make_config(port)
    async with run_gateway(good, work_dir) as gateway:
        envoy = gateway.envoys[0]
        assert gateway.config_path is not None
        results: Counter[str] = Counter()
        stop = asyncio.Event()
        clients = [asyncio.create_task(hammer(f"http://127.0.0.1:{port}/healthz", stop, results)) for _ in range(2)]
        await more_requests(results, 20)
        saved = good.replace("body: ok", "body: saved")
        (work_dir / "good.yaml").write_text(saved)
        shell = await asyncio.create_subprocess_shell(
            f"rm {gateway.config_path}; (sleep 0.3; cat {work_dir / 'good.yaml'}) > {gateway.config_path}"
        )
        assert await shell.wait() == 0
        await gateway.wait_synced(revision_of(saved))
        await more_requests(results, 20)
        stop.set()
        await asyncio.gather(*clients)
        assert set(results) == {"200 ok", "200 saved"}, results
        assert await stat(envoy, "listener_manager.listener_removed") == 0
        # The empty file did reach the control plane, and was held back there.
        assert "held back: it removes every listener (1 served)" in caplog.text
        code, out, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")
        assert code == 0 and "REJECTED" not in out, out


def routes_config(port: int) -> str:
    return f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
routes:
  - {{name: probe, match: {{path: {{exact: /probe}}}}, direct_response: {{status: 200, body: "probe"}}}}
  - {{name: other, match: {{path: {{exact: /other}}}}, direct_response: {{status: 200, body: "other"}}}}
"""


async def test_deleting_every_route_from_etcd_is_held_back_and_reported(tmp_path: Path) -> None:
    port = free_port()
    async with run_etcd(tmp_path / "etcd") as etcd:
        settings = EtcdSettings(endpoints=tuple(etcd.endpoints))
        async with EtcdClient(settings) as client:
            plan = plan_apply(await read_stored(client, "/xgate/"), parse_document(routes_config(port), "t"), "/xgate/")
            await execute(client, plan)
        async with run_gateway(None, tmp_path / "gw", etcd=settings) as gateway:
            envoy = gateway.envoys[0]
            status_url = f"http://127.0.0.1:{gateway.status_port}"
            results: Counter[str] = Counter()
            stop = asyncio.Event()
            clients = [asyncio.create_task(hammer(f"http://127.0.0.1:{port}/probe", stop, results)) for _ in range(2)]
            await more_requests(results, 20)
            assert await etcd.delete_prefix("/xgate/route/") == 2
            await gateway.wait_for_rejection("held back")
            deleted = gateway.plane.state.rejected
            await more_requests(results, 50)
            stop.set()
            await asyncio.gather(*clients)
            assert set(results) == {"200 probe"}, results
            assert await stat(envoy, "listener_manager.listener_removed") == 0
            code, out, _ = await run_cli("status", "--url", status_url)
            assert code == 1, out
            assert f"last change REJECTED (revision {deleted})" in out
            assert "held back: it removes every route (2 served)" in out and "--allow-empty" in out

            # The next change serves what etcd holds, exactly: the deleted routes do not come back.
            route = {"match": {"path": {"exact": "/new"}}, "direct_response": {"status": 200, "body": "new"}}
            added = await etcd.put("/xgate/route/new", json.dumps(route))
            await gateway.wait_etcd_revision(added)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.get("/new")).text == "new"
                assert (await http.get("/probe")).status_code == 404
            code, out, _ = await run_cli("status", "--url", status_url)
            assert code == 0 and "REJECTED" not in out, out
