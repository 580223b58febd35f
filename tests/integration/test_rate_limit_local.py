"""The local rate limit through a real Envoy: bursts, refill rate, independent keys, live limit changes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from xgate.testing import free_port, run_gateway

pytestmark = pytest.mark.integration


def config(port: int, limit: str, extra: str = "") -> str:
    return f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
routes:
  - name: limited
    match: {{path: {{prefix: /limited}}}}
    direct_response: {{status: 200, body: ok}}
    plugins:
      rate_limit: {{local: {limit}}}
  - name: free
    direct_response: {{status: 200, body: free}}
{extra}"""


async def statuses(client: httpx.AsyncClient, path: str, count: int, **kwargs: object) -> list[int]:
    return [(await client.get(path, **kwargs)).status_code for _ in range(count)]  # type: ignore[arg-type]


async def test_burst_then_429_with_headers_and_other_routes_unaffected(tmp_path: Path) -> None:
    port = free_port()
    async with (
        run_gateway(config(port, "{requests: 5, per: 10s}"), tmp_path) as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        first = await client.get("/limited")
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit"] == "5"
        assert first.headers["x-ratelimit-remaining"] == "4"
        assert await statuses(client, "/limited", 4) == [200] * 4
        limited = await client.get("/limited")
        assert limited.status_code == 429
        assert limited.headers["x-ratelimit-remaining"] == "0"
        assert limited.headers["x-xgate-rate-limited"] == "local"
        assert "rate_limited" in limited.text
        assert await statuses(client, "/other", 20) == [200] * 20

        # A new limit applies without a restart and without touching the listener.
        await gateway.apply(config(port, "{requests: 50, per: 10s}"))
        assert await statuses(client, "/limited", 30) == [200] * 30
        _, body = await gateway.envoys[0].admin_get("/stats?filter=listener_manager.listener_modified")
        assert body.strip().endswith(": 0"), body


async def test_bucket_refills_at_the_configured_rate(tmp_path: Path) -> None:
    port = free_port()
    async with (
        run_gateway(config(port, "{requests: 4, per: 500ms, burst: 4}"), tmp_path),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        allowed = 0
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < 2.0:
            allowed += (await client.get("/limited")).status_code == 200
            await asyncio.sleep(0.005)
        # The burst of 4 plus 4 tokens every 500 ms: about 4 + 4 * 2.0 / 0.5 = 20 in two seconds.
        expected = 4 + 4 * elapsed / 0.5
        assert expected - 5 <= allowed <= expected + 1, (allowed, expected)


async def test_clients_and_keys_have_their_own_buckets(tmp_path: Path) -> None:
    port = free_port()
    extra = """
  - name: by-key
    match: {path: {prefix: /keyed}}
    direct_response: {status: 200, body: ok}
    plugins:
      rate_limit: {local: {requests: 3, per: 10s, by: "header:x-api-key"}}
"""
    async with run_gateway(config(port, "{requests: 3, per: 10s, by: client_ip}", extra), tmp_path):
        url = f"http://127.0.0.1:{port}"
        async with (
            httpx.AsyncClient(base_url=url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.1")) as a,
            httpx.AsyncClient(base_url=url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")) as b,
        ):
            assert await statuses(a, "/limited", 4) == [200, 200, 200, 429]
            assert await statuses(b, "/limited", 4) == [200, 200, 200, 429]  # B is not affected by A
            assert await statuses(a, "/keyed", 4, headers={"x-api-key": "one"}) == [200, 200, 200, 429]
            assert await statuses(a, "/keyed", 3, headers={"x-api-key": "two"}) == [200, 200, 200]


async def test_jwt_subjects_have_their_own_buckets(tmp_path: Path) -> None:
    """`by: claim:sub` counts per verified subject: the jwt plugin's filter runs first and leaves the claims
    in metadata, which the rate-limit action reads."""
    import base64

    import jwt

    secret = "a-test-secret-of-32-bytes-length"
    key = base64.urlsafe_b64encode(secret.encode()).rstrip(b"=").decode()
    port = free_port()
    text = f"""
plugins:
  jwt:
    providers: [{{name: main, jwks: {{keys: [{{kty: oct, alg: HS256, k: "{key}"}}]}}}}]
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
routes:
  - name: me
    direct_response: {{status: 200, body: ok}}
    plugins:
      rate_limit: {{local: {{requests: 2, per: 10s, by: "claim:sub"}}}}
"""

    def bearer(subject: str) -> dict[str, str]:
        token = jwt.encode({"sub": subject, "exp": int(time.time()) + 600}, secret, algorithm="HS256")
        return {"authorization": f"Bearer {token}"}

    async with run_gateway(text, tmp_path), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert await statuses(client, "/me", 3, headers=bearer("alice")) == [200, 200, 429]
        assert await statuses(client, "/me", 3, headers=bearer("bob")) == [200, 200, 429]
        assert (await client.get("/me")).status_code == 401  # no token: jwt answers first
