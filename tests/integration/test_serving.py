"""A config served by a real Envoy: each route action, matches and the CORS plugin behave as configured."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from xgate.testing import free_port, run_gateway

pytestmark = pytest.mark.integration


async def test_routes_are_served(make_config: Callable[..., str], work_dir: Path) -> None:
    port = free_port()
    config = make_config(port)
    async with (
        run_gateway(config, work_dir),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        response = await client.get("/anything?q=1")
        assert response.status_code == 200
        assert response.json()["upstream"] == "v1"
        assert response.json()["path"] == "/anything?q=1"
        assert response.headers["x-served-by"] == "xgate"

        assert (await client.get("/anything", headers={"x-version": "v2"})).json()["upstream"] == "v2"
        health = await client.get("/healthz")
        assert (health.status_code, health.text) == (200, "ok")
        moved = await client.get("/old")
        assert moved.status_code == 301
        assert moved.headers["location"].endswith(f":{port}/new")

        answered = Counter([(await client.get("/split")).json()["upstream"] for _ in range(60)])
        assert set(answered) == {"v1", "v2"}, answered


async def test_cors_plugin_answers_preflight_for_allowed_origin_only(
    make_config: Callable[..., str], work_dir: Path
) -> None:
    port = free_port()
    config = make_config(port)
    preflight = {"access-control-request-method": "POST"}
    async with (
        run_gateway(config, work_dir),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        allowed = await client.options("/cors/x", headers={"origin": "https://app.example.com", **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in allowed.headers["access-control-allow-methods"]

        denied = await client.options("/cors/x", headers={"origin": "https://evil.example.com", **preflight})
        assert "access-control-allow-origin" not in denied.headers

        # A route without the plugin gets no CORS headers even for a listed origin.
        plain = await client.get("/other", headers={"origin": "https://app.example.com"})
        assert "access-control-allow-origin" not in plain.headers


async def http_10(port: int, request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Send one raw request and read the answer until Envoy closes (HTTP/1.0 without keep-alive)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}
    return status, headers, body


async def test_http_10_requests_are_served_as_nginx_does(make_config: Callable[..., str], work_dir: Path) -> None:
    """Health checkers and scripts still speak HTTP/1.0; Envoy's default answered them 426 Upgrade Required."""
    port = free_port()
    async with run_gateway(make_config(port), work_dir):
        status, _, body = await http_10(port, b"GET /healthz HTTP/1.0\r\n\r\n")  # no Host header at all
        assert (status.split(b" ")[1], body) == (b"200", b"ok"), status
        status, headers, body = await http_10(port, b"GET /anything?q=1 HTTP/1.0\r\nHost: example.com\r\n\r\n")
        assert status.split(b" ")[1] == b"200", status
        echoed = json.loads(body)  # the upstream got it (over HTTP/1.1) with its path and Host
        assert (echoed["upstream"], echoed["path"], echoed["headers"]["host"]) == ("v1", "/anything?q=1", "example.com")
        assert headers[b"x-served-by"] == b"xgate"
