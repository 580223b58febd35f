"""HTTP/2 from clients through a real Envoy: h2c by prior knowledge, an HTTP/1.1 `Upgrade: h2c` answered over
HTTP/1.1, and the listener limits (concurrent streams, request header size) as clients meet them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest

from xgate.demo.upstream import DemoUpstream
from xgate.testing import free_port, run_gateway

pytestmark = pytest.mark.integration


@pytest.fixture
async def ports(upstreams: dict[str, DemoUpstream], work_dir: Path) -> AsyncIterator[tuple[int, int]]:
    plain, limited = free_port(), free_port()
    text = f"""
listeners:
  - {{name: plain, address: 127.0.0.1, port: {plain}}}
  - name: limited
    address: 127.0.0.1
    port: {limited}
    limits: {{max_concurrent_streams: 7, max_request_headers_kb: 2, max_headers_count: 20}}
upstreams:
  - {{name: web, endpoints: ["127.0.0.1:{upstreams["v1"].port}"]}}
routes:
  - {{name: web, upstream: web}}
"""
    async with run_gateway(text, work_dir):
        yield plain, limited


async def test_h2c_by_prior_knowledge(ports: tuple[int, int]) -> None:
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        responses = await asyncio.gather(*(client.get(f"http://127.0.0.1:{ports[0]}/{i}") for i in range(5)))
    assert {(r.status_code, r.http_version) for r in responses} == {(200, "HTTP/2")}
    assert sorted(r.json()["path"] for r in responses) == [f"/{i}" for i in range(5)]


def _upgrade_request(port: int) -> bytes:
    request = (
        "GET /up HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request.encode())
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


async def test_an_h2c_upgrade_is_answered_over_http1(ports: tuple[int, int]) -> None:
    # RFC 9113 deprecated the h2c upgrade; a server may ignore it, and Envoy does: the request is served as
    # HTTP/1.1 (no 101), and a client such as curl --http2 goes on with HTTP/1.1.
    answer = await asyncio.to_thread(_upgrade_request, ports[0])
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 200 OK", answer[:200]
    assert b'"path": "/up"' in answer


def _server_settings(port: int) -> dict[int, int]:
    """The SETTINGS the listener sends a new h2c connection."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(connection.data_to_send())
        while True:
            data = raw.recv(65536)
            assert data, "the connection closed before SETTINGS"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    return {int(key): value.new_value for key, value in event.changed_settings.items()}


async def test_listener_limits_are_what_clients_meet(ports: tuple[int, int]) -> None:
    plain, limited = ports
    settings = await asyncio.to_thread(_server_settings, limited)
    assert settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7
    unlimited = await asyncio.to_thread(_server_settings, plain)  # Envoy's default: no practical limit
    assert unlimited.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS, 2**31 - 1) > 1000
    big = {"x-big": "a" * 3000}
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{limited}/", headers=big)).status_code == 431
        assert (await client.get(f"http://127.0.0.1:{plain}/", headers=big)).status_code == 200
        many = {f"x-h{i}": "1" for i in range(25)}
        assert (await client.get(f"http://127.0.0.1:{limited}/", headers=many)).status_code == 431
        assert (await client.get(f"http://127.0.0.1:{limited}/")).status_code == 200
