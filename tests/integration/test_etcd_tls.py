"""etcd over TLS with client certificates: the control plane's client verifies etcd and presents its own."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from xgate.sources.etcd.client import EtcdClient, EtcdSettings, EtcdUnavailableError
from xgate.supervisor import die_with_parent, terminate
from xgate.testing import free_port
from xgate.testing.etcd import find_etcd
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    files = {name: folder / name for name in ("ca.key", "ca.pem", "server.key", "server.pem", "client.key",
                                              "client.pem", "san.cnf")}  # fmt: skip
    files["san.cnf"].write_text("subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth, clientAuth\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=xgate-test-ca",
            "-keyout", str(files["ca.key"]), "-out", str(files["ca.pem"]))  # fmt: skip
    for who in ("server", "client"):
        csr = folder / f"{who}.csr"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=xgate-{who}",
                "-keyout", str(files[f"{who}.key"]), "-out", str(csr))  # fmt: skip
        openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca.pem"]), "-CAkey", str(files["ca.key"]),
                "-CAcreateserial", "-days", "1", "-extfile", str(files["san.cnf"]),
                "-out", str(files[f"{who}.pem"]))  # fmt: skip
    return files


async def test_tls_with_client_certificates(tmp_path: Path) -> None:
    files = make_certificates(tmp_path)
    client_port, peer_port = free_port(), free_port()
    url = f"https://127.0.0.1:{client_port}"
    argv = [
        find_etcd(), "--name", "tls", "--data-dir", str(tmp_path / "data"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"tls=http://127.0.0.1:{peer_port}",
        "--cert-file", str(files["server.pem"]), "--key-file", str(files["server.key"]),
        "--trusted-ca-file", str(files["ca.pem"]), "--client-cert-auth",
        "--logger", "zap", "--log-level", "error",
    ]  # fmt: skip
    log = (tmp_path / "etcd.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *die_with_parent(argv), stdout=log, stderr=log, start_new_session=True
    )
    try:
        trusted = EtcdSettings(
            endpoints=(url,), ca_file=files["ca.pem"], cert_file=files["client.pem"], key_file=files["client.key"],
            timeout=2.0,
        )  # fmt: skip
        async with EtcdClient(trusted) as client:

            async def answers() -> bool:
                try:
                    await client.put(b"/xgate/route/a", b'{"direct_response": {"status": 200}}')
                except EtcdUnavailableError:
                    return False
                return True

            await wait_for(answers, 15, "etcd to answer over TLS")
            _, kvs = await client.get_prefix(b"/xgate/")
            assert [kv.key for kv in kvs] == [b"/xgate/route/a"]

        # Without a client certificate the handshake is refused.
        no_certificate = EtcdSettings(endpoints=(url,), ca_file=files["ca.pem"], timeout=2.0)
        async with EtcdClient(no_certificate) as client:
            with pytest.raises(EtcdUnavailableError):
                await client.get_prefix(b"/xgate/")
    finally:
        await terminate(process, 5)
        log.close()
