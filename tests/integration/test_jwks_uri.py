"""JWKS from an HTTPS URL on both paths, against a loopback HTTPS server whose CA the test makes: keys are
fetched over verified TLS, a rotated key is accepted after one refetch, and a failing server leaves the last
good keys in use."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

from xgate.demo.upstream import DemoUpstream
from xgate.testing import free_port, run_authz_service, run_gateway

pytestmark = pytest.mark.integration

ISSUER = "https://issuer.test"


def make_tls(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA and a server certificate for 127.0.0.1 (IP SAN) signed by it: (CA file, server SSL context)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xgate test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


@dataclass
class JwksServer:
    """Serves `jwks` at /jwks.json (or 500 while `failing`); `fetches` counts the requests."""

    port: int
    jwks: dict[str, Any] = field(default_factory=dict)
    failing: bool = False
    fetches: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.failing:
            return web.Response(status=500, text="down")
        return web.json_response(self.jwks)


@pytest.fixture
async def jwks_server(tmp_path: Path) -> AsyncIterator[tuple[JwksServer, Path]]:
    ca_file, context = make_tls(tmp_path)
    server = JwksServer(port=free_port())
    app = web.Application()
    app.router.add_get("/jwks.json", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", server.port, ssl_context=context).start()
    try:
        yield server, ca_file
    finally:
        await runner.cleanup()


KEYS = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2", "k3")}


def jwks(*kids: str) -> dict[str, Any]:
    keys = []
    for kid in kids:
        jwk = json.loads(RSAAlgorithm.to_jwk(KEYS[kid].public_key()))
        keys.append({**jwk, "kid": kid, "alg": "RS256"})
    return {"keys": keys}


def token(kid: str) -> str:
    claims = {"iss": ISSUER, "sub": kid, "exp": int(time.time()) + 600}
    return jwt.encode(claims, KEYS[kid], algorithm="RS256", headers={"kid": kid})


def config(port: int, upstream: int, authz: int, verify: str, jwks_port: int, ca_file: Path, refresh: str) -> str:
    provider = {
        "name": "remote", "verify": verify, "issuer": ISSUER, "jwks_uri": f"https://127.0.0.1:{jwks_port}/jwks.json",
        "jwks_ca_file": str(ca_file), "jwks_refresh": refresh, "jwks_min_refetch": "1s",
        "forward_claims": {"sub": "x-sub"},
    }  # fmt: skip
    return yaml.safe_dump({
        "plugins": {"jwt": {"providers": [provider]}, "policy": {"service": f"127.0.0.1:{authz}", "timeout": "2s"}},
        "listeners": [{"name": "public", "address": "127.0.0.1", "port": port}],
        "upstreams": [{"name": "app", "endpoints": [f"127.0.0.1:{upstream}"]}],
        "routes": [{"name": "api", "upstream": "app"}],
    })  # fmt: skip


async def status(client: httpx.AsyncClient, kid: str) -> int:
    response = await client.get("/api", headers={"authorization": f"Bearer {token(kid)}"})
    if response.status_code == 200:
        assert response.json()["headers"]["x-sub"] == kid
    return response.status_code


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return await check()


async def test_python_path_rotation_and_failure(
    jwks_server: tuple[JwksServer, Path], upstreams: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    server, ca_file = jwks_server
    server.jwks = jwks("k1")
    port, authz = free_port(), free_port()
    text = config(port, upstreams["v1"].port, authz, "python", server.port, ca_file, refresh="1h")
    async with (
        run_gateway(text, tmp_path / "gw") as gateway,
        run_authz_service(gateway.xds_port, authz),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        assert await eventually(lambda: _is(status(client, "k1"), 200), 5)
        assert server.fetches == 1  # fetched once when the provider loaded; the schedule is 1h

        server.jwks = jwks("k2")  # rotation: k1 gone, k2 new
        await asyncio.sleep(1.1)  # past jwks_min_refetch since the first fetch
        assert await status(client, "k2") == 200  # unknown kid -> one refetch -> accepted
        assert server.fetches == 2
        assert await status(client, "k1") == 401  # the old key is gone; the cache was emptied with it
        assert await status(client, "k3") == 401  # unknown kids within jwks_min_refetch: no refetch
        assert server.fetches == 2

        server.failing = True
        await asyncio.sleep(1.1)
        assert await status(client, "k3") == 401  # the refetch fails...
        assert server.fetches == 3
        assert await status(client, "k2") == 200  # ...and the last good keys stay in use


async def test_native_path_fetches_over_verified_tls(
    jwks_server: tuple[JwksServer, Path], upstreams: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    server, ca_file = jwks_server
    server.jwks = jwks("k1")
    port, authz = free_port(), free_port()
    text = config(port, upstreams["v1"].port, authz, "native", server.port, ca_file, refresh="1s")
    async with (
        run_gateway(text, tmp_path / "gw"),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        assert await eventually(lambda: _is(status(client, "k1"), 200), 5)
        server.jwks = jwks("k2")  # Envoy refetches on its schedule (jwks_refresh)
        assert await eventually(lambda: _is(status(client, "k2"), 200), 5)
        assert await status(client, "k1") == 401
        server.failing = True
        fetched = server.fetches
        assert await eventually(lambda: _true(server.fetches > fetched + 1), 6)  # it tried again, and failed
        assert await status(client, "k2") == 200  # the last good keys stay in use


async def test_native_path_answers_at_once_while_the_jwks_endpoint_fails(
    jwks_server: tuple[JwksServer, Path], upstreams: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    """Without keys, Envoy fetches the JWKS for each request and holds it meanwhile: with retries and their
    1 s backoff that was 1.4-2.6 s per request while the endpoint failed. Now a request is refused at once,
    and the keys are used as soon as the endpoint answers again."""
    server, ca_file = jwks_server
    server.failing = True
    port, authz = free_port(), free_port()
    text = config(port, upstreams["v1"].port, authz, "native", server.port, ca_file, refresh="1h")
    async with (
        run_gateway(text, tmp_path / "gw"),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        for _ in range(3):
            started = time.monotonic()
            assert await status(client, "k1") == 401
            assert time.monotonic() - started < 0.5
        server.failing, server.jwks = False, jwks("k1")
        assert await eventually(lambda: _is(status(client, "k1"), 200), 5)


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _true(value: bool) -> bool:
    return value
