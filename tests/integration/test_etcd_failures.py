"""etcd failures never touch traffic and never lose a change: watch resume, compaction, leader loss,
a full outage, and a fleet of control planes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from xgate.cli.etcdstore import ConflictError, execute, plan_apply, read_stored
from xgate.config.load import parse_document
from xgate.controlplane import ControlPlane
from xgate.sources.etcd.client import EtcdClient, EtcdSettings, EtcdUnavailableError
from xgate.sources.etcd.source import EtcdSource
from xgate.sources.revision import Revision
from xgate.testing import free_port, run_cli, run_etcd, run_gateway
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration


def probe_route(body: str) -> str:
    return json.dumps({"match": {"path": {"exact": "/probe"}}, "direct_response": {"status": 200, "body": body}})


def config(port: int, body: str = "start") -> str:
    return f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
routes:
  - {{name: probe, match: {{path: {{exact: /probe}}}}, direct_response: {{status: 200, body: "{body}"}}}}
"""


async def apply(settings: EtcdSettings, text: str) -> int:
    async with EtcdClient(settings) as client:
        plan = plan_apply(await read_stored(client, "/xgate/"), parse_document(text, "test"), "/xgate/")
        return (await execute(client, plan))[0]


async def probe(port: int) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{port}/probe")).text


async def test_source_resumes_after_its_last_revision_and_rereads_after_compaction(tmp_path: Path) -> None:
    async with run_etcd(tmp_path / "etcd") as etcd:
        settings = EtcdSettings(endpoints=tuple(etcd.endpoints))
        seen: list[Revision] = []

        async def emit(revision: Revision) -> None:
            seen.append(revision)

        async with EtcdClient(settings) as client:
            source = EtcdSource(client, emit)
            for name in ("a", "b", "c"):
                await etcd.put(f"/xgate/route/{name}", probe_route(name))
            stop = asyncio.Event()
            task = asyncio.create_task(source.run(stop))
            await wait_for(lambda: seen and len(seen[-1].config.routes) == 3, 5, "the first read")  # type: ignore[union-attr]
            stop.set()
            await task
            # Changes while the source is away: it resumes from its revision + 1 and misses none.
            stopped_at = source.revision
            await etcd.put("/xgate/route/d", probe_route("d"))
            await etcd.delete("/xgate/route/a")
            await etcd.put("/xgate/route/b", probe_route("b2"))
            stop = asyncio.Event()
            task = asyncio.create_task(source.run(stop))
            await wait_for(lambda: source.revision >= stopped_at + 3, 5, "the watch to resume")
            routes = {route.name: route.direct_response.body for route in seen[-1].config.routes}  # type: ignore[union-attr]
            assert routes == {"b": "b2", "c": "c", "d": "d"}
            assert source.health.full_reads == 1  # resumed, not re-read
            stop.set()
            await task

            # Away again, and etcd compacts past where the source stopped: it reads everything again.
            await etcd.put("/xgate/route/e", probe_route("e"))
            await etcd.delete("/xgate/route/c")
            latest = await etcd.put("/xgate/route/d", probe_route("d2"))
            await etcd.compact(latest)
            stop = asyncio.Event()
            task = asyncio.create_task(source.run(stop))
            await wait_for(lambda: source.health.full_reads == 2, 5, "a full read after compaction")
            routes = {route.name: route.direct_response.body for route in seen[-1].config.routes}  # type: ignore[union-attr]
            assert routes == {"b": "b2", "d": "d2", "e": "e"}
            assert routes == {
                k.rsplit("/", 1)[1]: json.loads(v)["direct_response"]["body"]
                for k, v in (await etcd.get_prefix("/xgate/route/")).items()
            }
            # And watches on from that read.
            revision = await etcd.put("/xgate/route/f", probe_route("f"))
            await wait_for(lambda: source.revision >= revision, 5, "the watch after the full read")
            assert "f" in {route.name for route in seen[-1].config.routes}  # type: ignore[union-attr]
            stop.set()
            await task


async def test_etcd_outage_leaves_traffic_alone_and_recovery_applies_changes(tmp_path: Path) -> None:
    port = free_port()
    async with run_etcd(tmp_path / "etcd") as etcd:
        settings = EtcdSettings(endpoints=tuple(etcd.endpoints), timeout=1.0)
        await apply(settings, config(port))
        async with run_gateway(None, tmp_path / "gw", etcd=settings) as gateway, httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{port}/probe"

            async def rate(seconds: float) -> tuple[int, int]:
                ok = failed = 0
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    response = await client.get(url)
                    ok, failed = (ok + 1, failed) if response.text == "start" else (ok, failed + 1)
                return ok, failed

            before, _ = await rate(1.0)
            member = etcd.members[0]
            await member.stop()
            await wait_for(lambda: not gateway.plane.report()["sources"]["etcd"]["connected"], 10, "the outage")
            during, failed = await rate(1.0)
            assert failed == 0
            assert during > before * 0.5, (before, during)  # same client loop, same Envoy: no slowdown
            status = gateway.plane.report()["sources"]["etcd"]
            assert status["outage_since"] is not None and status["outages"] == 1
            # "Has my change reached every Envoy?" cannot be answered yes while etcd is out of sight.
            code, out, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")
            assert code == 1, out
            assert "source etcd: UNREACHABLE for" in out and "have not reached any Envoy" in out

            await member.start()
            await member.wait_ready()
            # Back as soon as the watch is, not at the next change or progress notification (10 min by default).
            await wait_for(lambda: gateway.plane.report()["sources"]["etcd"]["connected"], 10, "the reconnection")
            code, out, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")
            assert code == 0 and "source etcd: connected" in out, out
            revision = await etcd.put("/xgate/route/probe", probe_route("after the outage"))
            await gateway.wait_etcd_revision(revision, timeout=15)
            assert await probe(port) == "after the outage"
            assert gateway.plane.report()["sources"]["etcd"]["connected"] is True


async def test_leader_killed_while_applying_loses_no_acknowledged_write(tmp_path: Path) -> None:
    port = free_port()
    async with run_etcd(tmp_path / "etcd", members=3) as etcd:
        settings = EtcdSettings(endpoints=tuple(etcd.endpoints), timeout=2.0)
        await apply(settings, config(port))
        async with run_gateway(None, tmp_path / "gw", etcd=settings) as gateway:
            acknowledged: list[tuple[int, str]] = []
            failures = 0

            async def writer() -> None:
                nonlocal failures
                for i in range(40):
                    body = f"gen-{i}"
                    try:
                        acknowledged.append((await apply(settings, config(port, body)), body))
                    except (EtcdUnavailableError, ConflictError):
                        failures += 1  # not acknowledged: the caller would retry
                    await asyncio.sleep(0.02)

            task = asyncio.create_task(writer())
            await wait_for(lambda: len(acknowledged) >= 10, 20, "ten acknowledged writes")
            leader = await etcd.leader()
            await leader.kill()
            await task
            assert len(acknowledged) >= 30, (len(acknowledged), failures)
            revision, body = acknowledged[-1]
            stored = json.loads(await etcd.get("/xgate/route/probe") or "{}")
            assert stored["direct_response"]["body"] == body  # the last acknowledged write is in etcd
            await gateway.wait_etcd_revision(revision, timeout=15)
            assert await probe(port) == body  # and it is what Envoy serves


async def test_killing_one_of_two_control_planes_changes_nothing_for_traffic(tmp_path: Path) -> None:
    port = free_port()
    async with run_etcd(tmp_path / "etcd") as etcd:
        settings = EtcdSettings(endpoints=tuple(etcd.endpoints))
        await apply(settings, config(port))
        async with (
            run_gateway(None, tmp_path / "a", etcd=settings, envoys=0) as first,
            run_gateway(None, tmp_path / "b", etcd=settings, envoys=0) as second,
        ):
            envoy = await first.start_envoy("fleet-envoy", xds_ports=[first.xds_port, second.xds_port])

            def serving(plane: ControlPlane) -> bool:
                return any(proxy["in_sync"] for proxy in plane.report()["proxies"])

            await wait_for(lambda: serving(first.plane) or serving(second.plane), 10, "a control plane to serve")
            connected = first if serving(first.plane) else second
            other = second if connected is first else first
            outcomes: list[int] = []
            stop = asyncio.Event()

            async def traffic() -> None:
                async with httpx.AsyncClient() as client:
                    while not stop.is_set():
                        outcomes.append((await client.get(f"http://127.0.0.1:{port}/probe")).status_code)
                        await asyncio.sleep(0.005)

            running = asyncio.create_task(traffic())
            await connected.stop_controlplane()
            revision = await etcd.put("/xgate/route/probe", probe_route("via the other one"))
            await other.wait_etcd_revision(revision, timeout=15)
            await wait_for(_says(port, "via the other one"), 10, "Envoy to serve the change")
            stop.set()
            await running
            assert set(outcomes) == {200} and len(outcomes) > 20
            assert envoy.returncode is None
            first.envoys.clear()
            await envoy.stop()


def _says(port: int, body: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await probe(port) == body

    return check
