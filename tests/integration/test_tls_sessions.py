"""TLS versions and ciphers a client can negotiate, and session ticket keys rotated by the README's rule."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
from pathlib import Path

import pytest

from xgate.demo.upstream import DemoUpstream
from xgate.testing import free_port, run_gateway
from xgate.testing.tls import TestCA, handshake

pytestmark = pytest.mark.integration

A = "a.example.test"


def _negotiated(port: int, context: ssl.SSLContext) -> tuple[str | None, str]:
    """(TLS version, cipher) of a new handshake for A. Blocking: run it in a thread."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=A) as tls,
    ):
        cipher = tls.cipher()
        return tls.version(), cipher[0] if cipher else ""


async def test_tls_versions_and_ciphers_are_what_clients_can_negotiate(
    upstreams: dict[str, DemoUpstream], work_dir: Path
) -> None:
    ca = TestCA()
    ca.issue(A).write(work_dir, "a")
    modern, legacy = free_port(), free_port()
    text = f"""
secrets:
  - {{name: a, cert_file: a.pem, key_file: a-key.pem}}
listeners:
  - {{name: modern, address: 127.0.0.1, port: {modern}, tls: {{certificates: [{{secret: a}}], min_version: "1.3"}}}}
  - name: legacy
    address: 127.0.0.1
    port: {legacy}
    tls: {{certificates: [{{secret: a}}], max_version: "1.2", ciphers: [ECDHE-ECDSA-AES256-GCM-SHA384]}}
upstreams:
  - {{name: web, endpoints: ["127.0.0.1:{upstreams["v1"].port}"]}}
routes:
  - {{name: web, upstream: web}}
"""

    def context(version: ssl.TLSVersion | None = None, ciphers: str | None = None) -> ssl.SSLContext:
        made = ssl.create_default_context(cadata=ca.cert)
        if version is not None:
            made.minimum_version = made.maximum_version = version
        if ciphers is not None:
            made.set_ciphers(ciphers)
        return made

    async with run_gateway(text, work_dir):
        assert (await asyncio.to_thread(_negotiated, modern, context()))[0] == "TLSv1.3"
        with pytest.raises(ssl.SSLError):  # a TLS 1.2 client meets min_version 1.3
            await asyncio.to_thread(_negotiated, modern, context(ssl.TLSVersion.TLSv1_2))
        # The legacy listener speaks TLS 1.2 only, with the one cipher it lists.
        assert await asyncio.to_thread(_negotiated, legacy, context()) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
        with pytest.raises(ssl.SSLError):  # a client offering only other ciphers
            await asyncio.to_thread(_negotiated, legacy, context(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
        with pytest.raises(ssl.SSLError):  # a TLS 1.3-only client meets max_version 1.2
            await asyncio.to_thread(_negotiated, legacy, context(ssl.TLSVersion.TLSv1_3))


async def test_ticket_keys_rotate_old_tickets_resume_until_their_key_is_dropped(
    upstreams: dict[str, DemoUpstream], work_dir: Path
) -> None:
    ca = TestCA()
    ca.issue(A).write(work_dir, "a")
    port = free_port()
    old, new = (base64.b64encode(os.urandom(80)).decode() for _ in range(2))

    def config(keys: list[str]) -> str:
        return f"""
secrets:
  - {{name: a, cert_file: a.pem, key_file: a-key.pem}}
  - {{name: tickets, ticket_keys: {json.dumps(keys)}}}
listeners:
  - name: edge
    address: 127.0.0.1
    port: {port}
    tls: {{certificates: [{{secret: a}}], session_ticket_keys: tickets}}
upstreams:
  - {{name: web, endpoints: ["127.0.0.1:{upstreams["v1"].port}"]}}
routes:
  - {{name: web, upstream: web}}
"""

    context = ssl.create_default_context(cadata=ca.cert)
    async with run_gateway(config([old]), work_dir) as gateway:
        _, sealed_old, _ = await asyncio.to_thread(handshake, port, A, context)

        # The new key first (it seals new tickets), the old one after it (it still opens the tickets it sealed).
        await gateway.apply(config([new, old]))
        _, _, reused = await asyncio.to_thread(handshake, port, A, context, sealed_old)
        assert reused, "a ticket of the old key must resume while that key is listed"
        _, sealed_new, _ = await asyncio.to_thread(handshake, port, A, context)

        # The old key dropped: its tickets are refused (a full handshake), the new key's still resume.
        await gateway.apply(config([new]))
        _, _, reused = await asyncio.to_thread(handshake, port, A, context, sealed_old)
        assert not reused, "a ticket of a dropped key must not resume"
        _, _, reused = await asyncio.to_thread(handshake, port, A, context, sealed_new)
        assert reused
