"""gRPC-Web through a real Envoy: framed calls over HTTP/1.1 in both content types, and browsers' preflights."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from google.protobuf import wrappers_pb2

from xgate.demo.grpc import SERVICE, GrpcUpstream, start_grpc_upstream
from xgate.testing import free_port, run_gateway

pytestmark = pytest.mark.integration

ORIGIN = "https://app.example.test"


def config(port: int, upstream: int) -> str:
    return f"""
listeners:
  - {{name: web, address: 127.0.0.1, port: {port}}}
upstreams:
  - {{name: grpc, endpoints: ["127.0.0.1:{upstream}"], protocol: http2}}
routes:
  - name: web
    match: {{grpc: {{service: {SERVICE}}}}}
    upstream: grpc
    plugins:
      grpc_web: {{allow_origins: ["{ORIGIN}"]}}
  - name: plain
    match: {{path: {{prefix: /plain/}}}}
    upstream: grpc
"""


@pytest.fixture
async def url(work_dir: Path) -> AsyncIterator[str]:
    upstream: GrpcUpstream = await start_grpc_upstream("web-upstream")
    port = free_port()
    try:
        async with run_gateway(config(port, upstream.port), work_dir):
            yield f"http://127.0.0.1:{port}"
    finally:
        await upstream.stop()


def _frame(text: str) -> bytes:
    message = wrappers_pb2.StringValue(value=text).SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def _from_text(body: bytes) -> bytes:
    """A grpc-web-text body: base64 chunks one after another, each padded on its own (so decode by quantum)."""
    return b"".join(base64.b64decode(body[start : start + 4]) for start in range(0, len(body), 4))


def _unframe(body: bytes) -> tuple[list[str], dict[str, str]]:
    """The messages and the trailers of a gRPC-Web response body (frames: flag, length, payload)."""
    messages: list[str] = []
    trailers: dict[str, str] = {}
    while body:
        flag, length = body[0], struct.unpack(">I", body[1:5])[0]
        payload, body = body[5 : 5 + length], body[5 + length :]
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(wrappers_pb2.StringValue.FromString(payload).value)
    return messages, trailers


@pytest.mark.parametrize("text_mode", [False, True], ids=["binary", "text"])
async def test_calls_in_both_content_types_get_messages_and_trailers(url: str, text_mode: bool) -> None:
    content_type = "application/grpc-web-text" if text_mode else "application/grpc-web+proto"
    # grpc-web's JavaScript client asks for a text answer with Accept (Envoy answers binary otherwise).
    headers = {"content-type": content_type, "accept": content_type, "x-grpc-web": "1", "origin": ORIGIN}

    async def call(method: str, text: str) -> tuple[httpx.Response, list[str], dict[str, str]]:
        body = _frame(text)
        async with httpx.AsyncClient(http1=True, http2=False) as client:
            response = await client.post(
                f"{url}/{SERVICE}/{method}", content=base64.b64encode(body) if text_mode else body, headers=headers
            )
        raw = _from_text(response.content) if text_mode else response.content
        return response, *_unframe(raw)

    response, messages, trailers = await call("Unary", "hello")
    assert response.status_code == 200 and response.http_version == "HTTP/1.1"
    assert response.headers["content-type"].startswith(content_type.partition("+")[0])
    assert messages == ["web-upstream:hello"]
    assert trailers["grpc-status"] == "0"
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "grpc-status" in response.headers["access-control-expose-headers"]

    response, messages, trailers = await call("ServerStream", "3:w")
    assert messages == ["web-upstream:w:0", "web-upstream:w:1", "web-upstream:w:2"]
    assert trailers["grpc-status"] == "0"

    response, messages, trailers = await call("Unary", "status:7")
    assert messages == []
    # A trailers-only answer comes back as headers; either way the client reads status and message.
    status = trailers.get("grpc-status") or response.headers.get("grpc-status")
    message = trailers.get("grpc-message") or response.headers.get("grpc-message")
    assert (status, message) == ("7", "asked for status 7"), (response.headers, trailers)


async def test_the_preflight_is_answered_for_the_allowed_origin_only(url: str) -> None:
    preflight = {
        "origin": ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-grpc-web,x-user-agent",
    }
    async with httpx.AsyncClient() as client:
        allowed = await client.options(f"{url}/{SERVICE}/Unary", headers=preflight)
        other = await client.options(f"{url}/{SERVICE}/Unary", headers={**preflight, "origin": "https://evil.test"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    for header in ("content-type", "x-grpc-web", "x-user-agent"):
        assert header in allowed.headers["access-control-allow-headers"]
    assert "access-control-allow-origin" not in other.headers


async def test_a_route_without_the_plugin_does_not_translate(url: str) -> None:
    # The filter is on the listener, switched off on this route: a gRPC-Web call goes to the upstream as is,
    # which a gRPC server refuses (it only speaks application/grpc).
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{url}/plain/x", content=_frame("x"), headers={"content-type": "application/grpc-web+proto"}
        )
    assert not (response.status_code == 200 and _unframe(response.content)[1].get("grpc-status") == "0")
