"""A certificate authority made on the spot, for tests that need TLS: server and client certificates it signs;
a handshake that reports what the client saw."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclass(frozen=True)
class Issued:
    """A certificate (PEM) with its private key (PEM)."""

    cert: str
    key: str

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.encode())

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """`<stem>.pem` and `<stem>-key.pem` (mode 600) in `directory`; their paths."""
        cert, key = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert.write_text(self.cert)
        key.touch(mode=0o600)
        key.write_text(self.key)
        return cert, key


class TestCA:
    """A self-signed CA (ECDSA P-256) that issues server and client certificates, valid from a minute ago."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str = "xgate test CA", days: int = 30) -> None:
        self._key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, *names: str, client: bool = False, uris: tuple[str, ...] = (), days: int = 7) -> Issued:
        """A certificate for DNS names (or IP addresses) `names` and URI SANs `uris`, for a server or, with
        `client`, for a client; its subject's common name is the first name."""
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        alt += [x509.UniformResourceIdentifier(uri) for uri in uris]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        common_name = names[0] if names else (uris[0] if uris else "client")
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem(key))


def handshake(
    port: int, server_name: str | None, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[dict[str, object], ssl.SSLSession | None, bool]:
    """One HTTPS/1.1 GET to 127.0.0.1:`port` on a new connection: (the server's certificate, the TLS session,
    whether the handshake resumed `session`). Blocking: run it in a thread."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name, session=session) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {server_name or 'localhost'}\r\nConnection: close\r\n\r\n".encode())
        while tls.recv(65536):  # read it all: TLS 1.3 tickets arrive after the handshake
            pass
        cert: dict[str, object] = dict(tls.getpeercert() or {})
        return cert, tls.session, bool(tls.session_reused)
