"""TLS in the config: secrets (certificates, keys, CA bundles, ticket keys), listener TLS and upstream TLS.

Key material lives in `secret` objects; listeners and upstreams name them. The control plane serves a secret's
content to Envoy over SDS, so a rotated certificate reaches new handshakes without rebuilding a listener.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from pydantic import Field, SecretStr, StringConstraints, field_serializer, field_validator, model_validator
from pydantic_core.core_schema import SerializationInfo

from xgate.config.base import Model
from xgate.config.types import Name

# Envoy's TLS session ticket keys are exactly 80 bytes (name, HMAC secret, AES key).
TICKET_KEY_BYTES = 80
# What `model_dump` prints for a private key unless the caller asks for the real value (see Secret).
REDACTED = "[redacted]"
REVEAL = "reveal_secrets"

# Cipher suites for TLS 1.2 and older that Envoy's BoringSSL knows (TLS 1.3's are not configurable).
CIPHERS = frozenset(
    {
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-RSA-AES256-SHA",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-SHA",
        "AES256-SHA",
    }
)
_DNS_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
SNI_PATTERN = rf"^(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*$"
SniName = Annotated[str, StringConstraints(pattern=SNI_PATTERN, max_length=253)]
SAN_PATTERN = r"^((dns|uri|email|ip):)?\S+$"


def _certificates(pem: str, what: str) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        found = []
    if not found:
        raise ValueError(f"{what} is not a PEM certificate (-----BEGIN CERTIFICATE-----)")
    return found


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def _private_key(pem: str) -> PrivateKey:
    # Never name the value: a message about a key must not carry any part of it.
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise ValueError("key is encrypted with a passphrase: store it unencrypted (Envoy cannot ask)") from None
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        raise ValueError("key is not a PEM private key (-----BEGIN PRIVATE KEY-----)") from None
    if not isinstance(key, PrivateKey):
        raise ValueError("key is of a kind Envoy does not serve: use RSA, ECDSA or Ed25519")
    return key


def _public_bytes(key: object) -> bytes:
    if not isinstance(
        key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    ):
        return b""  # a kind a private key of ours never has: it cannot match
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class Secret(Model):
    """Key material, served to Envoy over SDS: a certificate chain (`cert`, leaf first) with its private `key`,
    and/or a CA bundle (`ca`: to verify client or upstream certificates), and/or session ticket keys
    (`ticket_keys`: base64 of 80 random bytes each; the first encrypts new tickets, all decrypt).

    In a config file each part may be a file instead (`cert_file`, `key_file`, `ca_file`; relative to the file):
    the control plane reads it, follows its changes and serves its content. In etcd the PEM text is stored
    (`xgate apply` reads the files and stores their content). A private key never shows in output: it is
    printed as "[redacted]" (see REVEAL for the one caller that needs it: storing it)."""

    name: Name
    cert: str | None = Field(default=None, max_length=256 * 1024)
    key: SecretStr | None = Field(default=None, max_length=64 * 1024)
    ca: str | None = Field(default=None, max_length=1024 * 1024)
    ticket_keys: tuple[SecretStr, ...] = Field(default=(), max_length=8)
    cert_file: str | None = Field(default=None, min_length=1)
    key_file: str | None = Field(default=None, min_length=1)
    ca_file: str | None = Field(default=None, min_length=1)

    @field_serializer("key")
    def _key_out(self, key: SecretStr | None, info: SerializationInfo) -> str | None:
        if key is None:
            return None
        return key.get_secret_value() if (info.context or {}).get(REVEAL) else REDACTED

    @field_serializer("ticket_keys")
    def _tickets_out(self, keys: tuple[SecretStr, ...], info: SerializationInfo) -> list[str]:
        reveal = (info.context or {}).get(REVEAL)
        return [key.get_secret_value() if reveal else REDACTED for key in keys]

    @field_validator("ticket_keys")
    @classmethod
    def _ticket_keys(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for index, key in enumerate(keys):
            try:
                raw = base64.b64decode(key.get_secret_value(), validate=True)
            except binascii.Error:
                raise ValueError(f"ticket key {index + 1} is not base64") from None
            if len(raw) != TICKET_KEY_BYTES:
                raise ValueError(f"ticket key {index + 1} must be {TICKET_KEY_BYTES} bytes (openssl rand -base64 80)")
        return keys

    @model_validator(mode="after")
    def _parts(self) -> Secret:
        for inline, file in (("cert", "cert_file"), ("key", "key_file"), ("ca", "ca_file")):
            if getattr(self, inline) is not None and getattr(self, file) is not None:
                raise ValueError(f"set {inline} or {file}, not both")
        has_cert = self.cert is not None or self.cert_file is not None
        has_key = self.key is not None or self.key_file is not None
        if has_cert != has_key:
            raise ValueError("a certificate needs its key and a key its certificate: set both")
        if not (has_cert or self.ca is not None or self.ca_file is not None or self.ticket_keys):
            raise ValueError("holds nothing: set cert and key, ca, or ticket_keys (or their *_file)")
        if self.cert is not None and self.key is not None:
            leaf = _certificates(self.cert, "cert")[0]
            key = _private_key(self.key.get_secret_value())
            if _public_bytes(leaf.public_key()) != _public_bytes(key.public_key()):
                raise ValueError("key does not belong to the certificate (the first one in cert)")
        if self.ca is not None:
            _certificates(self.ca, "ca")
        return self

    @property
    def files(self) -> dict[str, str]:
        """The parts that come from files: field -> path as written."""
        return {field: path for field in ("cert_file", "key_file", "ca_file") if (path := getattr(self, field))}

    @property
    def leaf(self) -> x509.Certificate | None:
        return _certificates(self.cert, "cert")[0] if self.cert is not None else None


class Certificate(Model):
    """A certificate a TLS listener serves: the secret holding it and the SNI names it is served for (exact
    names or `*.example.com`); one certificate may leave `hosts` out: the default, for clients that send no
    SNI or a name no other certificate lists."""

    secret: Name
    hosts: tuple[SniName, ...] = ()

    @field_validator("hosts")
    @classmethod
    def _lower(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(host.lower() for host in hosts)


class ClientCertificates(Model):
    """mTLS: clients present certificates signed by the CA bundle in secret `ca`. `required: false` accepts
    clients without one (a certificate that is sent is still verified). `san` lists the subject alternative
    names accepted (`dns:`, `uri:`, `email:` or `ip:` then the exact value; a bare value is a DNS name); empty:
    any. The verified identity goes to the upstream in `x-forwarded-client-cert` (a client's own copy is
    always removed)."""

    ca: Name
    required: bool = True
    san: tuple[Annotated[str, StringConstraints(pattern=SAN_PATTERN)], ...] = ()


TlsVersion = Literal["1.2", "1.3"]
Alpn = Literal["h2", "http/1.1"]


class ListenerTls(Model):
    """HTTPS on a listener: certificates chosen by SNI, TLS versions and TLS 1.2 ciphers, ALPN, session
    resumption, client certificates, and a plain-HTTP port that redirects to it."""

    certificates: tuple[Certificate, ...] = Field(min_length=1)
    min_version: TlsVersion = "1.2"
    max_version: TlsVersion = "1.3"
    ciphers: tuple[str, ...] = ()
    alpn: tuple[Alpn, ...] = ("h2", "http/1.1")
    session_resumption: bool = True
    session_ticket_keys: Name | None = None
    client_certificates: ClientCertificates | None = None
    http_redirect_port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _check(self) -> ListenerTls:
        if float(self.min_version) > float(self.max_version):
            raise ValueError(f"min_version {self.min_version} is above max_version {self.max_version}")
        unknown = sorted(set(self.ciphers) - CIPHERS)
        if unknown:
            raise ValueError(f"unknown cipher {unknown[0]!r} (known: {', '.join(sorted(CIPHERS))})")
        if self.ciphers and self.min_version == "1.3":
            raise ValueError("ciphers apply to TLS 1.2 only, and min_version is 1.3")
        defaults = [cert for cert in self.certificates if not cert.hosts]
        if len(defaults) > 1 and len(self.certificates) > 1:
            raise ValueError("only one certificate may leave hosts out (the default one)")
        seen: dict[str, str] = {}
        for cert in self.certificates:
            for host in cert.hosts:
                if host in seen:
                    raise ValueError(f"host {host!r} is listed for two certificates ({seen[host]}, {cert.secret})")
                seen[host] = cert.secret
        if self.session_ticket_keys is not None and not self.session_resumption:
            raise ValueError("session_ticket_keys with session_resumption: false would never be used")
        if len(set(self.alpn)) != len(self.alpn):
            raise ValueError("alpn lists a protocol twice")
        return self

    @property
    def secrets(self) -> tuple[str, ...]:
        names = [cert.secret for cert in self.certificates]
        if self.client_certificates is not None:
            names.append(self.client_certificates.ca)
        if self.session_ticket_keys is not None:
            names.append(self.session_ticket_keys)
        return tuple(dict.fromkeys(names))


class UpstreamTls(Model):
    """TLS to an upstream's endpoints. The server's certificate is verified against the CA bundle in secret `ca`
    (required unless `verify: false`) and must name `san` (default: the SNI name). `sni` defaults to the first
    endpoint's host when it is a name. `certificate` is a client certificate (mTLS to the upstream). With
    `alpn: true` Envoy offers h2 and http/1.1 and speaks what the server picks; `protocol: http2` alone
    offers only h2."""

    sni: Annotated[str, StringConstraints(pattern=SNI_PATTERN.replace(r"(\*\.)?", ""), max_length=253)] | None = None
    ca: Name | None = None
    verify: bool = True
    san: tuple[Annotated[str, StringConstraints(pattern=SAN_PATTERN)], ...] = ()
    certificate: Name | None = None
    alpn: bool = False

    @model_validator(mode="after")
    def _check(self) -> UpstreamTls:
        if self.verify and self.ca is None:
            raise ValueError("ca: name the secret holding the CA bundle that signs the upstream's certificate")
        if not self.verify and (self.ca is not None or self.san):
            raise ValueError("verify: false checks nothing, so ca and san would be ignored: leave them out")
        return self

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(name for name in (self.ca, self.certificate) if name is not None)


def split_san(entry: str) -> tuple[str, str]:
    """("dns" | "uri" | "email" | "ip", value) of a `san` entry; a bare value is a DNS name."""
    found = re.match(r"^(dns|uri|email|ip):(.*)$", entry)
    return (found.group(1), found.group(2)) if found else ("dns", entry)
