"""TLS to upstreams through a real Envoy: SNI, the server's certificate checked, a client certificate, h2 by
ALPN (a gRPC server over TLS) and HTTP/1.1 when that is what the server picks."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from aiohttp import web
from google.protobuf import wrappers_pb2

from xgate.demo.grpc import SERVICE, EchoService, echo_handlers
from xgate.testing import free_port, run_gateway
from xgate.testing.tls import TestCA

pytestmark = pytest.mark.integration


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[TestCA, TestCA, int, int, list[str]]]:
    """A gRPC server over TLS that requires a client certificate, and an HTTPS/1.1 server that notes the SNI
    name of each connection."""
    internal, clients = TestCA("internal"), TestCA("gateway clients")
    server = internal.issue("grpc.internal")
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers((echo_handlers(EchoService("secure")),))
    credentials = grpc.ssl_server_credentials(
        [(server.key.encode(), server.cert.encode())], root_certificates=clients.cert.encode(), require_client_auth=True
    )
    grpc_port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    await grpc_server.start()

    names: list[str] = []
    web_cert, web_key = internal.issue("web.internal").write(tmp_path, "web")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(web_cert, web_key)
    context.sni_callback = lambda sock, name, ctx: names.append(name or "")

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"web over {request.version.major}.{request.version.minor}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    web_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", web_port, ssl_context=context).start()
    try:
        yield internal, clients, grpc_port, web_port, names
    finally:
        await runner.cleanup()
        await grpc_server.stop(0)


async def test_upstream_tls_checks_the_server_and_presents_a_client_certificate(
    servers: tuple[TestCA, TestCA, int, int, list[str]], tmp_path: Path
) -> None:
    internal, clients, grpc_port, web_port, names = servers
    gateway_cert = clients.issue(client=True, uris=("spiffe://xgate.test/gateway",))
    port = free_port()
    indent = "\n      "
    text = f"""
secrets:
  - name: internal
    ca: |{indent}{indent.join(internal.cert.splitlines())}
  - name: gateway
    cert: |{indent}{indent.join(gateway_cert.cert.splitlines())}
    key: |{indent}{indent.join(gateway_cert.key.splitlines())}
listeners:
  - {{name: public, address: 127.0.0.1, port: {port}}}
upstreams:
  - name: secure-grpc
    endpoints: ["127.0.0.1:{grpc_port}"]
    protocol: http2
    tls: {{ca: internal, sni: grpc.internal, certificate: gateway}}
  - name: impostor
    endpoints: ["127.0.0.1:{grpc_port}"]
    protocol: http2
    tls: {{ca: internal, sni: grpc.internal, san: [other.internal], certificate: gateway}}
  - name: no-client-cert
    endpoints: ["127.0.0.1:{grpc_port}"]
    protocol: http2
    tls: {{ca: internal, sni: grpc.internal}}
  - name: web
    endpoints: ["127.0.0.1:{web_port}"]
    tls: {{ca: internal, sni: web.internal, alpn: true}}
routes:
  - {{name: grpc, match: {{grpc: {{service: {SERVICE}}}}}, upstream: secure-grpc}}
  - {{name: impostor, match: {{path: {{prefix: /impostor/}}}}, upstream: impostor}}
  - {{name: anonymous, match: {{path: {{prefix: /anonymous/}}}}, upstream: no-client-cert}}
  - {{name: web, upstream: web}}
"""
    async with run_gateway(text, tmp_path / "gw"), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        encode, decode = wrappers_pb2.StringValue.SerializeToString, wrappers_pb2.StringValue.FromString

        def call(path: str) -> grpc.aio.UnaryUnaryMultiCallable:
            return channel.unary_unary(path, request_serializer=encode, response_deserializer=decode)

        # h2 by ALPN (a gRPC server speaks nothing else), the server checked, our certificate accepted.
        assert (await call(f"/{SERVICE}/Unary")(wrappers_pb2.StringValue(value="hi"), timeout=5)).value == "secure:hi"
        for refused in ("/impostor/x", "/anonymous/x"):  # a name the server's certificate lacks; no client cert
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call(refused)(wrappers_pb2.StringValue(value="hi"), timeout=5)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, refused
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/page")
        # alpn: true offered h2 and http/1.1; this server picked HTTP/1.1.
        assert (response.status_code, response.text) == (200, "web over 1.1")
        assert "web.internal" in names
