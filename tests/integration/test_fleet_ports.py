"""Fleet addresses and ports: an Envoy finds its control plane by host name, and a control plane never shares its
xDS or status port with another one (the second is refused, naming the process that holds the port)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from xgate.proxy.process import EnvoyProcess
from xgate.sources.revision import revision_of
from xgate.testing import free_port, run_cli, run_gateway
from xgate.testing.ports import free_ports

pytestmark = pytest.mark.integration


def direct_config(port: int, body: str = "by name") -> str:
    return (
        f"listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]\n"
        f"routes: [{{name: hello, direct_response: {{status: 200, body: {body!r}}}}}]\n"
    )


async def test_envoy_reaches_the_control_plane_by_host_name(tmp_path: Path) -> None:
    """The README's fleet bootstrap names control planes by host name; a real Envoy connects through DNS."""
    port = free_port()
    config = direct_config(port)
    async with run_gateway(config, tmp_path, envoys=0) as gateway:
        made = await run_cli("bootstrap", "--xds", f"localhost:{gateway.xds_port}", "--admin-port", "0")
        assert made.code == 0, made.err
        bootstrap = yaml.safe_load(made.out)
        assert bootstrap["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"
        envoy = EnvoyProcess(bootstrap, tmp_path / "envoy", concurrency=1)
        gateway.envoys.append(envoy)  # stopped with the gateway
        await envoy.start()
        await envoy.wait_ready(30)
        await gateway.wait_synced(revision_of(config))
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/")
        assert (response.status_code, response.text) == (200, "by name")


@asynccontextmanager
async def controlplane(config: Path, xds: int, status: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """`xgate controlplane` in its own process, once it said it is ready."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xgate", "controlplane", "-f", str(config),
        "--xds", f"127.0.0.1:{xds}", "--status", f"127.0.0.1:{status}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert b"control plane ready" in line, line
        yield process
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 20) == 0


async def test_a_second_control_plane_on_a_taken_port_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(direct_config(free_port()))
    xds, status, other_xds, other_status = free_ports(4)
    async with controlplane(config, xds, status) as first:
        holder = f"is in use by pid {first.pid} (xgate controlplane -f "
        for taken, flags in [
            (f"127.0.0.1:{xds} (xDS, --xds)", ["--xds", f"127.0.0.1:{xds}", "--status", f"127.0.0.1:{other_status}"]),
            (
                f"127.0.0.1:{status} (status API, --status)",
                ["--xds", f"127.0.0.1:{other_xds}", "--status", f"127.0.0.1:{status}"],
            ),
        ]:
            # Before: gRPC's SO_REUSEPORT let the second one bind the xDS port too, say "ready" and keep running.
            second = await run_cli("controlplane", "-f", str(config), *flags, timeout=30)
            assert second.code == 2, second
            assert "ready" not in second.out
            lines = second.err.strip().splitlines()
            assert len(lines) == 1, second.err
            assert lines[0].startswith(f"xgate controlplane: {taken} {holder}"), lines[0]
            assert lines[0].endswith("; stop it or choose another port"), lines[0]
        # The first one still has its ports to itself and serves.
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{status}/healthz")).status_code == 200
