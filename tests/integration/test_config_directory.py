"""`-f DIR` is one rule for every command: `xgate controlplane -f DIR` serves a directory of config files to a real
Envoy and follows a change to any one of them (it used to log "Is a directory", then "ready", and serve nothing)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from xgate.proxy.bootstrap import build_bootstrap
from xgate.proxy.process import EnvoyProcess
from xgate.testing import free_port, write_atomic
from xgate.testing.gateway import wait_for
from xgate.testing.ports import free_ports

pytestmark = pytest.mark.integration


def route(name: str, prefix: str, body: str) -> str:
    action = f"direct_response: {{status: 200, body: {body}}}"
    return f"  - {{name: {name}, match: {{path: {{prefix: {prefix}}}}}, {action}}}\n"


async def test_controlplane_serves_a_directory_and_follows_a_change_to_one_file(tmp_path: Path) -> None:
    config = tmp_path / "conf.d"
    config.mkdir()
    port = free_port()
    (config / "listeners.yaml").write_text(f"listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]\n")
    (config / "a-routes.yaml").write_text("routes:\n" + route("a", "/a", "a-one"))
    (config / "b-routes.yml").write_text("routes:\n" + route("b", "/b", "b-one"))
    (config / "README.txt").write_text("not config\n")
    xds, status = free_ports(2)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xgate", "controlplane", "-f", str(config),
        "--xds", f"127.0.0.1:{xds}", "--status", f"127.0.0.1:{status}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    envoy = EnvoyProcess(
        build_bootstrap(node_id="dir", node_cluster="test", xds_servers=[("127.0.0.1", xds)], admin_port=0),
        tmp_path / "envoy",
        concurrency=1,
    )
    log: list[str] = []
    try:
        assert process.stdout is not None
        while not any("control plane ready" in line for line in log):
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, "\n".join(log)
            log.append(line.decode())
        assert not any("Is a directory" in line or "REJECTED" in line for line in log), "\n".join(log)
        await envoy.start()
        await envoy.wait_ready(30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def serves(path: str, body: str) -> bool:
                try:
                    response = await client.get(path)
                except httpx.HTTPError:
                    return False
                return response.status_code == 200 and response.text == body

            await wait_for(lambda: serves("/a", "a-one"), 20, "the directory's routes to be served")
            assert await serves("/b", "b-one")
            # One file of the directory changes (saved by rename, as editors do); the others stay.
            write_atomic(config / "b-routes.yml", "routes:\n" + route("b", "/b", "b-two"))
            await wait_for(lambda: serves("/b", "b-two"), 10, "the change to one file to be served")
            assert await serves("/a", "a-one")
            # A new file joins the config; saved in place this time.
            (config / "c-routes.json").write_text(
                '{"routes": [{"name": "c", "match": {"path": {"prefix": "/c"}}, '
                '"direct_response": {"status": 200, "body": "c-one"}}]}'
            )
            await wait_for(lambda: serves("/c", "c-one"), 10, "a new file's route to be served")
    finally:
        await envoy.stop()
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 20) == 0
