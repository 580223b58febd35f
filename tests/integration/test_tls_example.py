"""examples/edge.yaml as the README runs it (certificates from scripts/example-certs.sh), on ports chosen here."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import wrappers_pb2

from xgate.demo.grpc import SERVICE, start_grpc_upstream
from xgate.demo.upstream import start_upstream
from xgate.testing import free_port, run_gateway

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]


async def test_the_edge_example_serves_https_h2_grpc_and_grpc_web(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    command = [str(ROOT / "scripts" / "example-certs.sh"), str(certs)]
    made = await asyncio.to_thread(lambda: subprocess.run(command, capture_output=True, text=True, check=False))
    assert made.returncode == 0, made.stderr
    assert shutil.which("openssl")
    web, echo = await start_upstream("demo-v1"), await start_grpc_upstream("demo-grpc")
    port, http_port = free_port(), free_port()
    text = (ROOT / "examples" / "edge.yaml").read_text()
    for old, new in (("10443", port), ("10080", http_port), ("18081", web.port), ("18091", echo.port)):
        assert old in text
        text = text.replace(old, str(new))
    ca = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    try:
        async with run_gateway(text, tmp_path):
            async with httpx.AsyncClient(verify=ca, http2=True) as client:
                response = await client.get(
                    f"https://127.0.0.1:{port}/hello",
                    headers={"host": "api.example.test"},
                    extensions={"sni_hostname": "api.example.test"},
                )
                assert (response.status_code, response.http_version) == (200, "HTTP/2")
                preflight = await client.options(
                    f"https://127.0.0.1:{port}/{SERVICE}/Unary",
                    headers={
                        "host": "api.example.test",
                        "origin": "https://app.example.test",
                        "access-control-request-method": "POST",
                        "access-control-request-headers": "content-type,x-grpc-web",
                    },
                    extensions={"sni_hostname": "api.example.test"},
                )
                assert preflight.headers["access-control-allow-origin"] == "https://app.example.test"
            async with httpx.AsyncClient() as client:
                moved = await client.get(f"http://127.0.0.1:{http_port}/x", headers={"host": "api.example.test"})
                assert moved.headers["location"] == f"https://api.example.test:{port}/x"
            credentials = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes())
            options = (("grpc.ssl_target_name_override", "grpc.example.test"),)
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
                unary = channel.unary_unary(
                    f"/{SERVICE}/Unary",
                    request_serializer=wrappers_pb2.StringValue.SerializeToString,
                    response_deserializer=wrappers_pb2.StringValue.FromString,
                )
                assert (await unary(wrappers_pb2.StringValue(value="hi"), timeout=5)).value == "demo-grpc:hi"
    finally:
        await web.stop()
        await echo.stop()
