"""A config served by a real Envoy: each route action, matches and the CORS plugin behave as configured."""

from __future__ import annotations

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
