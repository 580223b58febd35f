"""The demo echo upstream answers JSON, chosen statuses and delays."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from xgate.demo.upstream import DemoUpstream, start_upstream


@pytest.fixture
async def upstream() -> AsyncIterator[DemoUpstream]:
    server = await start_upstream("alpha")
    try:
        yield server
    finally:
        await server.stop()


async def test_echoes_request(upstream: DemoUpstream) -> None:
    assert upstream.port > 0
    assert upstream.url == f"http://127.0.0.1:{upstream.port}"
    async with httpx.AsyncClient() as client:
        response = await client.post(upstream.url + "/a/b?x=1&y=2", headers={"X-Custom": "Yes"})
    assert response.status_code == 200
    assert response.headers["x-upstream"] == "alpha"
    body = response.json()
    assert body["upstream"] == "alpha"
    assert body["method"] == "POST"
    assert body["path"] == "/a/b?x=1&y=2"
    assert body["headers"]["x-custom"] == "Yes"


@pytest.mark.parametrize("code", [201, 404, 503])
async def test_status_route(upstream: DemoUpstream, code: int) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{upstream.url}/status/{code}")
    assert response.status_code == code
    assert response.json()["path"] == f"/status/{code}"


async def test_status_out_of_range_is_400(upstream: DemoUpstream) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{upstream.url}/status/99")
    assert response.status_code == 400


async def test_delay_route(upstream: DemoUpstream) -> None:
    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        response = await client.get(f"{upstream.url}/delay/200")
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert 0.2 <= elapsed < 2


async def test_two_upstreams_get_distinct_ports() -> None:
    first, second = await start_upstream("a"), await start_upstream("b")
    try:
        assert first.port != second.port
    finally:
        await first.stop()
        await second.stop()


async def test_run_upstream_prints_port_and_stops_on_sigterm() -> None:
    code = "from xgate.demo.upstream import run_upstream; run_upstream('cli', '127.0.0.1', 0)"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode().strip()
        assert line.startswith("demo upstream cli listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/")
        assert response.json()["upstream"] == "cli"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
