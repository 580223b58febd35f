"""An etcd that stops answering without closing its connections (SIGSTOP: a frozen process, a hung host) is
reported unreachable within seconds, like one that is down, and connected again when it answers."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from xgate.cli.etcdstore import execute, plan_apply, read_stored
from xgate.config.load import parse_document
from xgate.sources.etcd.client import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS, EtcdClient, EtcdSettings
from xgate.testing import free_port, run_cli, run_etcd, run_gateway
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration


def config(port: int) -> str:
    return f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
routes:
  - {{name: probe, match: {{path: {{exact: /probe}}}}, direct_response: {{status: 200, body: "start"}}}}
"""


async def test_a_frozen_etcd_is_reported_unreachable_and_then_connected_again(tmp_path: Path) -> None:
    port = free_port()
    async with run_etcd(tmp_path / "etcd") as etcd:
        settings = EtcdSettings(endpoints=tuple(etcd.endpoints), timeout=1.0)
        async with EtcdClient(settings) as client:
            plan = plan_apply(await read_stored(client, "/xgate/"), parse_document(config(port), "t"), "/xgate/")
            await execute(client, plan)
        async with run_gateway(None, tmp_path / "gw", etcd=settings) as gateway, httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{gateway.status_port}"

            def connected() -> bool:
                return bool(gateway.plane.report()["sources"]["etcd"]["connected"])

            pid = etcd.members[0].pid
            assert pid is not None  # the etcd this test started, and only that one
            frozen_at = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            try:
                # Keepalive: a ping every KEEPALIVE_TIME_MS, each given KEEPALIVE_TIMEOUT_MS; slack for a busy host.
                limit = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000 + 10
                await wait_for(lambda: not connected(), limit, "the frozen etcd to be reported")
                seen_after = time.monotonic() - frozen_at
                code, out, _ = await run_cli("status", "--url", url)
                assert code == 1, out
                assert "source etcd: UNREACHABLE for" in out, out
                assert (await http.get(f"http://127.0.0.1:{port}/probe")).text == "start"  # Envoy serves on
            finally:
                os.kill(pid, signal.SIGCONT)
            print(f"frozen etcd reported unreachable after {seen_after:.1f} s")
            await wait_for(connected, 20, "etcd to be connected again")
            code, out, _ = await run_cli("status", "--url", url)
            assert code == 0 and "source etcd: connected" in out, out
            # And its changes flow again.
            route = {"match": {"path": {"exact": "/probe"}}, "direct_response": {"status": 200, "body": "thawed"}}
            revision = await etcd.put("/xgate/route/probe", json.dumps(route))
            await gateway.wait_etcd_revision(revision, timeout=15)
            assert (await http.get(f"http://127.0.0.1:{port}/probe")).text == "thawed"
