"""HTTPS through a real Envoy, with a CA made in the test: SNI, ALPN, rotation without dropped connections,
mTLS, session resumption, the HTTP -> HTTPS redirect (versions, ciphers, ticket keys: test_tls_sessions.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import httpx
import pytest
from cryptography import x509
from google.protobuf import wrappers_pb2

from xgate.demo.grpc import SERVICE, GrpcUpstream, start_grpc_upstream
from xgate.demo.upstream import DemoUpstream
from xgate.testing import Gateway, free_port, run_gateway, write_atomic
from xgate.testing.gateway import wait_for
from xgate.testing.tls import TestCA, handshake

pytestmark = pytest.mark.integration

A, B, DEFAULT = "a.example.test", "x.b.example.test", "default.example.test"


@dataclass
class Edge:
    gateway: Gateway
    port: int
    http_port: int
    ca: TestCA
    work: Path

    def context(self, **kwargs: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca.cert)
        for key, value in kwargs.items():
            setattr(context, key, value)
        return context


def edge_config(port: int, http_port: int, upstream: int, grpc_port: int, extra: str = "") -> str:
    return f"""
secrets:
  - {{name: a, cert_file: a.pem, key_file: a-key.pem}}
  - {{name: b, cert_file: b.pem, key_file: b-key.pem}}
  - {{name: fallback, cert_file: default.pem, key_file: default-key.pem}}
listeners:
  - name: edge
    address: 127.0.0.1
    port: {port}
    tls:
      certificates:
        - {{secret: a, hosts: [{A}]}}
        - {{secret: b, hosts: ["*.b.example.test"]}}
        - {{secret: fallback}}
      http_redirect_port: {http_port}
upstreams:
  - {{name: web, endpoints: ["127.0.0.1:{upstream}"]}}
  - {{name: grpc, endpoints: ["127.0.0.1:{grpc_port}"], protocol: http2}}
routes:
  - {{name: grpc, match: {{grpc: {{service: {SERVICE}}}}}, upstream: grpc}}
  - {{name: web, upstream: web, websocket: true}}
{extra}"""


@pytest.fixture
async def grpc_upstream() -> AsyncIterator[GrpcUpstream]:
    upstream = await start_grpc_upstream("grpc-tls")
    try:
        yield upstream
    finally:
        await upstream.stop()


@pytest.fixture
async def edge(upstreams: dict[str, DemoUpstream], grpc_upstream: GrpcUpstream, work_dir: Path) -> AsyncIterator[Edge]:
    ca = TestCA()
    ca.issue(A).write(work_dir, "a")
    ca.issue("*.b.example.test").write(work_dir, "b")
    ca.issue(DEFAULT).write(work_dir, "default")
    port, http_port = free_port(), free_port()
    text = edge_config(port, http_port, upstreams["v1"].port, grpc_upstream.port)
    async with run_gateway(text, work_dir) as gateway:
        yield Edge(gateway, port, http_port, ca, work_dir)


def _names(cert: dict[str, object]) -> list[str]:
    return [value for kind, value in cert["subjectAltName"] if kind == "DNS"]  # type: ignore[attr-defined]


async def test_sni_picks_the_certificate(edge: Edge) -> None:
    context = edge.context()
    context.check_hostname = False  # the unknown name below gets the default certificate, by design
    for sent, expected in ((A, A), (B, "*.b.example.test"), ("other.example.test", DEFAULT), (None, DEFAULT)):
        cert, _, _ = await asyncio.to_thread(handshake, edge.port, sent, context)
        assert _names(cert) == [expected], sent


async def test_h2_by_alpn_http1_without_it_and_the_redirect(edge: Edge) -> None:
    url = f"https://127.0.0.1:{edge.port}/hello"
    sni = {"sni_hostname": A}
    async with httpx.AsyncClient(verify=edge.context(), http2=True) as client:
        response = await client.get(url, headers={"host": A}, extensions=sni)
        assert (response.status_code, response.http_version) == (200, "HTTP/2")
        assert response.json()["headers"]["x-forwarded-proto"] == "https"
    async with httpx.AsyncClient(verify=edge.context(), http2=False) as client:
        response = await client.get(url, headers={"host": A}, extensions=sni)
        assert (response.status_code, response.http_version) == (200, "HTTP/1.1")
    async with httpx.AsyncClient() as client:
        moved = await client.get(f"http://127.0.0.1:{edge.http_port}/p?q=1", headers={"host": f"{A}:{edge.http_port}"})
    assert moved.status_code == 301
    assert moved.headers["location"] == f"https://{A}:{edge.port}/p?q=1"


async def test_grpc_over_tls(edge: Edge) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=edge.ca.cert.encode())
    options = (("grpc.ssl_target_name_override", A), ("grpc.default_authority", A))
    async with grpc.aio.secure_channel(f"127.0.0.1:{edge.port}", credentials, options) as channel:
        unary = channel.unary_unary(
            f"/{SERVICE}/Unary",
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=wrappers_pb2.StringValue.FromString,
        )
        assert (await unary(wrappers_pb2.StringValue(value="tls"), timeout=5)).value == "grpc-tls:tls"


async def _served_serial(edge: Edge) -> int:
    """The serial number of the certificate a new handshake for A gets."""

    def serial() -> int:
        with (
            socket.create_connection(("127.0.0.1", edge.port), timeout=5) as raw,
            edge.context().wrap_socket(raw, server_hostname=A) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    return await asyncio.to_thread(serial)


async def test_rotation_serves_the_new_certificate_and_keeps_open_connections(edge: Edge) -> None:
    gateway = edge.gateway
    before = await _served_serial(edge)
    sni = {"sni_hostname": A}
    url = f"https://127.0.0.1:{edge.port}"
    async with (
        httpx.AsyncClient(verify=edge.context(), http2=True, base_url=url) as h2,
        aiohttp.ClientSession() as session,
    ):
        assert (await h2.get("/one", headers={"host": A}, extensions=sni)).http_version == "HTTP/2"
        socket_ = await session.ws_connect(f"{url}/ws", ssl=edge.context(), server_hostname=A, headers={"host": A})
        await socket_.send_str("before")
        assert (await socket_.receive_str()) == "v1:before"
        h2_connections = await gateway.envoys[0].stat("http.edge.downstream_cx_http2_total")

        # Rotate as cert-manager does: new files put in place by rename (the key first, then the certificate).
        fresh = edge.ca.issue(A)
        write_atomic(edge.work / "a-key.pem", fresh.key)
        write_atomic(edge.work / "a.pem", fresh.cert)
        expected = fresh.certificate.serial_number
        await wait_for(lambda: _matches(edge, expected), 10, "new handshakes to get the new certificate")
        assert expected != before

        # The open connections were kept: the same h2 connection and WebSocket go on working.
        assert (await h2.get("/two", headers={"host": A}, extensions=sni)).status_code == 200
        await socket_.send_str("after")
        assert (await socket_.receive_str()) == "v1:after"
        await socket_.close()
        assert await gateway.envoys[0].stat("http.edge.downstream_cx_http2_total") == h2_connections
    assert await gateway.envoys[0].stat("listener_manager.listener_modified") == 0
    assert await gateway.envoys[0].stat("listener_manager.total_listeners_draining") == 0


async def test_a_half_done_rotation_keeps_the_last_good_certificate(edge: Edge) -> None:
    before = await _served_serial(edge)
    stranger = edge.ca.issue(A)
    write_atomic(edge.work / "a.pem", stranger.cert)  # a new certificate next to the old key
    issues = await edge.gateway.wait_for_rejection("does not belong to the certificate")
    assert any("a-key.pem" in issue or "key_file" in issue for issue in issues), issues
    assert await _served_serial(edge) == before
    write_atomic(edge.work / "a-key.pem", stranger.key)  # the rotation completes
    await wait_for(lambda: _matches(edge, stranger.certificate.serial_number), 10, "the new certificate")


async def _matches(edge: Edge, serial: int) -> bool:
    return await _served_serial(edge) == serial


@pytest.fixture
async def mtls(upstreams: dict[str, DemoUpstream], work_dir: Path) -> AsyncIterator[Edge]:
    ca, clients = TestCA("servers"), TestCA("clients")
    ca.issue(A).write(work_dir, "a")
    (work_dir / "clients-ca.pem").write_text(clients.cert)
    port, optional = free_port(), free_port()
    text = f"""
secrets:
  - {{name: a, cert_file: a.pem, key_file: a-key.pem}}
  - {{name: clients, ca_file: clients-ca.pem}}
listeners:
  - name: strict
    address: 127.0.0.1
    port: {port}
    tls:
      certificates: [{{secret: a}}]
      client_certificates: {{ca: clients, san: ["uri:spiffe://xgate.test/good", "dns:good.client.test"]}}
  - name: optional
    address: 127.0.0.1
    port: {optional}
    tls:
      certificates: [{{secret: a}}]
      client_certificates: {{ca: clients, required: false}}
upstreams:
  - {{name: web, endpoints: ["127.0.0.1:{upstreams["v1"].port}"]}}
routes:
  - {{name: web, upstream: web}}
"""
    async with run_gateway(text, work_dir) as gateway:
        edge = Edge(gateway, port, optional, ca, work_dir)
        edge.clients = clients  # type: ignore[attr-defined]
        yield edge


async def _get(
    edge: Edge, port: int, cert: tuple[Path, Path] | None, headers: dict[str, str] | None = None
) -> httpx.Response:
    context = edge.context()
    if cert is not None:
        context.load_cert_chain(*cert)
    async with httpx.AsyncClient(verify=context) as client:
        return await client.get(
            f"https://127.0.0.1:{port}/who", headers={"host": A, **(headers or {})}, extensions={"sni_hostname": A}
        )


async def test_mtls_refuses_clients_without_a_valid_certificate_and_forwards_the_identity(mtls: Edge) -> None:
    clients: TestCA = mtls.clients  # type: ignore[attr-defined]
    good = clients.issue(client=True, uris=("spiffe://xgate.test/good",)).write(mtls.work, "good")
    wrong_san = clients.issue("bad.client.test", client=True).write(mtls.work, "wrong-san")
    stranger = TestCA("another").issue("good.client.test", client=True).write(mtls.work, "stranger")
    for cert in (None, wrong_san, stranger):
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):  # refused in the handshake or at once after it
            await _get(mtls, mtls.port, cert)
    forged = {"x-forwarded-client-cert": "By=spiffe://forged;URI=spiffe://xgate.test/admin"}
    response = await _get(mtls, mtls.port, good, forged)
    assert response.status_code == 200
    seen = response.json()["headers"]["x-forwarded-client-cert"]
    assert "URI=spiffe://xgate.test/good" in seen and "forged" not in seen and "admin" not in seen, seen
    # Optional client certificates: a client without one passes, and a header it sends is removed.
    response = await _get(mtls, mtls.http_port, None, forged)
    assert response.status_code == 200
    assert "x-forwarded-client-cert" not in response.json()["headers"]
    response = await _get(mtls, mtls.http_port, good)
    assert "URI=spiffe://xgate.test/good" in response.json()["headers"]["x-forwarded-client-cert"]


async def test_resumption_is_seen_by_the_client_and_survives_rotation_with_ticket_keys(
    upstreams: dict[str, DemoUpstream], work_dir: Path
) -> None:
    ca = TestCA()
    ca.issue(A).write(work_dir, "a")
    ports = free_port(), free_port(), free_port()
    keys = [base64.b64encode(os.urandom(80)).decode() for _ in range(2)]
    text = f"""
secrets:
  - {{name: a, cert_file: a.pem, key_file: a-key.pem}}
  - {{name: tickets, ticket_keys: {json.dumps(keys)}}}
listeners:
  - {{name: default, address: 127.0.0.1, port: {ports[0]}, tls: {{certificates: [{{secret: a}}]}}}}
  - name: none
    address: 127.0.0.1
    port: {ports[1]}
    tls: {{certificates: [{{secret: a}}], session_resumption: false}}
  - name: keyed
    address: 127.0.0.1
    port: {ports[2]}
    tls: {{certificates: [{{secret: a}}], session_ticket_keys: tickets}}
upstreams:
  - {{name: web, endpoints: ["127.0.0.1:{upstreams["v1"].port}"]}}
routes:
  - {{name: web, upstream: web}}
"""
    context = ssl.create_default_context(cadata=ca.cert)
    async with run_gateway(text, work_dir):
        sessions = {}
        for name, port in zip(("default", "none", "keyed"), ports, strict=True):
            _, session, reused = await asyncio.to_thread(handshake, port, A, context)
            assert not reused
            _, _, reused = await asyncio.to_thread(handshake, port, A, context, session)
            assert reused == (name != "none"), name
            sessions[name] = session
        # A new certificate: tickets sealed with the listener's own ticket keys stay good.
        fresh = ca.issue(A)
        write_atomic(work_dir / "a-key.pem", fresh.key)
        write_atomic(work_dir / "a.pem", fresh.cert)

        async def rotated() -> bool:
            cert, _, _ = await asyncio.to_thread(handshake, ports[2], A, ssl.create_default_context(cadata=ca.cert))
            return int(str(cert["serialNumber"]), 16) == fresh.certificate.serial_number

        await wait_for(rotated, 10, "the new certificate")
        _, _, reused = await asyncio.to_thread(handshake, ports[2], A, context, sessions["keyed"])
        assert reused
