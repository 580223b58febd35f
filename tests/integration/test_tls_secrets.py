"""Secrets in etcd: served over SDS, rotated by `xgate apply`, a bad value held back; and a private key never
shows in any output: logs, translate, status, diff, get, metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import ssl
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from xgate.demo.upstream import DemoUpstream
from xgate.sources.etcd.client import EtcdSettings
from xgate.testing import free_port, run_cli, run_etcd, run_gateway
from xgate.testing.gateway import wait_for
from xgate.testing.tls import Issued, TestCA

pytestmark = pytest.mark.integration

HOST = "edge.example.test"


def config(port: int, upstream: int) -> str:
    return f"""
secrets:
  - {{name: edge, cert_file: edge.pem, key_file: edge-key.pem}}
listeners:
  - name: edge
    address: 127.0.0.1
    port: {port}
    tls: {{certificates: [{{secret: edge, hosts: [{HOST}]}}]}}
upstreams:
  - {{name: web, endpoints: ["127.0.0.1:{upstream}"]}}
routes:
  - {{name: web, upstream: web}}
"""


def _serial(port: int, ca: TestCA) -> int:
    context = ssl.create_default_context(cadata=ca.cert)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def _serves(port: int, ca: TestCA, issued: Issued) -> bool:
    return await asyncio.to_thread(_serial, port, ca) == issued.certificate.serial_number


def _fragments(key: str) -> list[str]:
    """Pieces of a PEM key that would betray it wherever it showed: each line of its body, and pieces of the
    base64 of the whole PEM (how a proto's inline_bytes prints as JSON), from every alignment."""
    body = [line for line in key.splitlines() if line and not line.startswith("-----")]
    whole = key.encode()
    encoded = [base64.b64encode(whole[start:]).decode()[8:40] for start in range(3)]
    return [line[:40] for line in body if len(line) >= 16] + encoded


async def test_etcd_secrets_rotate_and_keys_never_show(
    upstreams: dict[str, DemoUpstream], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ca = TestCA()
    first, second = ca.issue(HOST), ca.issue(HOST)
    files = tmp_path / "config"
    files.mkdir()
    first.write(files, "edge")
    port = free_port()
    document = files / "gateway.yaml"
    document.write_text(config(port, upstreams["v1"].port))
    outputs: dict[str, str] = {}

    async def cli(name: str, *args: str, expect: int = 0) -> str:
        result = await run_cli(*args)
        outputs[name] = result.out + result.err
        assert result.code == expect, (name, result)
        return outputs[name]

    await cli("validate", "validate", "-f", str(document))
    await cli("translate xds", "translate", "-f", str(document), "--to", "xds")
    await cli("translate ir", "translate", "-f", str(document), "--to", "ir")
    async with run_etcd(tmp_path / "etcd") as etcd:
        target = ",".join(etcd.endpoints)
        await cli("apply", "apply", "-f", str(document), "--etcd", target)
        stored = json.loads(await etcd.get("/xgate/secret/edge") or "{}")
        assert stored["key"] == first.key and "cert_file" not in stored  # what a fleet's control planes need
        settings = EtcdSettings(endpoints=tuple(etcd.endpoints))
        async with run_gateway(None, tmp_path / "gw", etcd=settings) as gateway:
            await wait_for(lambda: _serves(port, ca, first), 10, "the certificate stored in etcd")

            # A rotation through etcd: the new files applied; the diff shows a changed key, never the key.
            second.write(files, "edge")
            diff = await cli("diff", "diff", "-f", str(document), "--etcd", target, expect=1)
            assert "update secret/edge" in diff and "[redacted sha256:" in diff
            await cli("apply again", "apply", "-f", str(document), "--etcd", target)
            await wait_for(lambda: _serves(port, ca, second), 10, "the rotated certificate")
            for output in ("table", "wide", "yaml", "json"):
                await cli(f"get {output}", "get", "-o", output, "--etcd", target)
                await cli(f"get secret {output}", "get", "secret", "edge", "-o", output, "--etcd", target)
            assert "[redacted sha256:" in outputs["get secret yaml"] and "BEGIN CERTIFICATE" in outputs["get yaml"]

            # A value whose key is not the certificate's: reported, and the last good one keeps serving.
            await etcd.put("/xgate/secret/edge", json.dumps({"cert": first.cert, "key": second.key}))
            await wait_for(
                lambda: any("does not belong" in w for w in gateway.plane.state.warnings), 10, "the bad secret"
            )
            assert await _serves(port, ca, second)

            # Stored values that are not valid objects are shown as text, except a secret's.
            await cli("get invalid", "get", "--etcd", target)
            await cli("get secret invalid", "get", "secret", "edge", "-o", "yaml", "--etcd", target, expect=2)
            assert "is not shown" in outputs["get secret invalid"]
            url = f"http://127.0.0.1:{gateway.status_port}"
            await cli("status", "status", "--url", url, "--json", expect=1)
            for path in ("/status", "/metrics", "/metrics?format=prometheus"):
                outputs[path] = await asyncio.to_thread(_read, url + path)
    outputs["logs"] = caplog.text
    assert "does not belong to the certificate" in outputs["logs"]  # the logs were captured
    for key in (first.key, second.key):
        for fragment in _fragments(key):
            for name, text in outputs.items():
                assert fragment not in text, f"a piece of a private key shows in {name}"


def _read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


async def test_a_key_file_every_user_can_read_is_warned_about(tmp_path: Path) -> None:
    issued = TestCA().issue(HOST)
    cert, key = issued.write(tmp_path, "edge")
    key.chmod(0o644)
    document = tmp_path / "gateway.yaml"
    document.write_text(config(free_port(), free_port()))
    result = await run_cli("validate", "-f", str(document))
    assert result.code == 0, result
    assert "edge-key.pem is readable by every user (mode 644): chmod 600 it" in result.err
    key.chmod(0o600)
    cert.chmod(0o644)  # a certificate is public: only keys are warned about
    result = await run_cli("validate", "-f", str(document))
    assert "readable by every user" not in result.err
