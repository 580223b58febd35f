"""examples/edge.yaml as the README runs it (certificates from scripts/example-certs.sh), on ports chosen here:
through run_gateway, and through `xgate up --demo`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import wrappers_pb2

from xgate.demo.grpc import SERVICE, start_grpc_upstream
from xgate.demo.upstream import start_upstream
from xgate.testing import free_port, run_gateway
from xgate.testing.ports import free_ports

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


def _grpc_echo(port: int, ca: bytes, authority: str) -> str:
    credentials = grpc.ssl_channel_credentials(ca)
    options = (("grpc.ssl_target_name_override", authority),)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        unary = channel.unary_unary(
            f"/{SERVICE}/Unary",
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=wrappers_pb2.StringValue.FromString,
        )
        answer: str = unary(wrappers_pb2.StringValue(value="up"), timeout=5).value
        return answer


def test_xgate_up_runs_the_edge_example_with_its_demo_upstreams(tmp_path: Path) -> None:
    # The README's command, `xgate up -f examples/edge.yaml --demo`, on a copy whose gateway ports are free ones
    # (the demo upstreams keep their fixed ports, as in test_up.py): the HTTP and gRPC demo upstreams start, the
    # gRPC one passes its grpc.health.v1 checks, and an HTTPS request and a gRPC call get through.
    made = subprocess.run(
        [str(ROOT / "scripts" / "example-certs.sh"), str(tmp_path / "certs")], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    https, http, xds, status, admin = free_ports(5)
    text = (ROOT / "examples" / "edge.yaml").read_text().replace("10443", str(https)).replace("10080", str(http))
    (tmp_path / "edge.yaml").write_text(text)
    argv = [sys.executable, "-m", "xgate", "up", "-f", str(tmp_path / "edge.yaml"), "--demo"]
    argv += ["--xds", f"127.0.0.1:{xds}", "--status", f"127.0.0.1:{status}", "--admin-port", str(admin)]
    log_path = tmp_path / "up.log"
    client = httpx.Client(verify=ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.pem")), timeout=2)
    with log_path.open("w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = client.get(
                    f"https://127.0.0.1:{https}/hello",
                    headers={"host": "api.example.test"},
                    extensions={"sni_hostname": "api.example.test"},
                )
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        assert response.json()["upstream"] == "demo-v1"
        # The gRPC demo upstream is checked by grpc.health.v1 (health_check: {type: grpc}) and serves calls.
        deadline = time.monotonic() + 20
        while True:
            stats = httpx.get(f"http://127.0.0.1:{admin}/stats?filter=^cluster.upstream/echo-grpc.health_check")
            if "health_check.success: 0" not in stats.text and "health_check.success" in stats.text:
                break
            assert time.monotonic() < deadline, stats.text
            time.sleep(0.2)
        assert _grpc_echo(https, (tmp_path / "certs" / "ca.pem").read_bytes(), "grpc.example.test") == "demo-grpc:up"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, log_path.read_text()
    finally:
        client.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
