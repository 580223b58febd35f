"""TLS in the config: what secrets, listener TLS, upstream TLS and gRPC matches accept, and each mistake's words."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from xgate.config.directory import load_path
from xgate.config.load import ObjectCache, parse_document
from xgate.config.secrets import SecretFiles
from xgate.config.tls import REDACTED, REVEAL, Secret
from xgate.errors import ConfigError
from xgate.pipeline import compile_config
from xgate.sources.etcd.layout import object_data, redacted_data
from xgate.testing.tls import TestCA

CA = TestCA()
A = CA.issue("a.example.test")
OTHER = CA.issue("a.example.test")


def _indented(pem: str) -> str:
    return "|\n" + "".join(f"      {line}\n" for line in pem.splitlines())


def secret_yaml(name: str, cert: str, key: str) -> str:
    return f"  - name: {name}\n    cert: {_indented(cert)}    key: {_indented(key)}"


def issues(text: str) -> list[str]:
    try:
        compile_config(parse_document(text, "gw.yaml"))
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    return []


LISTENER = "listeners:\n  - name: edge\n    port: 10443\n    tls: {certificates: [{secret: a}]}\n"


def test_a_secret_holds_a_matching_pair_and_prints_its_key_redacted() -> None:
    secret = Secret.model_validate({"name": "a", "cert": A.cert, "key": A.key})
    assert A.key not in repr(secret) and A.key not in str(secret.model_dump(mode="json"))
    assert secret.model_dump(mode="json")["key"] == REDACTED
    assert object_data(secret)["key"] == A.key  # what is stored in etcd
    shown = redacted_data("secret", object_data(secret))
    assert shown["key"].startswith("[redacted sha256:") and shown["cert"] == A.cert


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cert": A.cert, "key": OTHER.key}, "key does not belong to the certificate"),
        ({"cert": A.cert}, "a certificate needs its key"),
        ({"cert": "not pem", "key": A.key}, "cert is not a PEM certificate"),
        ({"cert": A.cert, "key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}, "not a PEM"),
        ({"cert": A.cert, "cert_file": "a.pem", "key": A.key}, "set cert or cert_file, not both"),
        ({}, "holds nothing"),
        ({"ticket_keys": [base64.b64encode(b"short").decode()]}, "must be 80 bytes"),
        ({"ca": "nope"}, "ca is not a PEM certificate"),
    ],
)
def test_secret_mistakes(fields: dict[str, object], message: str) -> None:
    text = "secrets:\n  - " + str({"name": "s", **fields}).replace("'", '"') + "\n"
    found = issues(text)
    assert any(message in issue for issue in found), found
    assert not any(A.key.splitlines()[1] in issue or OTHER.key.splitlines()[1] in issue for issue in found)


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ("{certificates: [{secret: a, hosts: [x.test]}, {secret: a, hosts: [x.test]}]}", "listed for two"),
        ("{certificates: [{secret: a}, {secret: a}]}", "only one certificate may leave hosts out"),
        ('{certificates: [{secret: a}], min_version: "1.3", max_version: "1.2"}', "above max_version"),
        ("{certificates: [{secret: a}], ciphers: [RC4-MD5]}", "unknown cipher 'RC4-MD5'"),
        ("{certificates: [{secret: a, hosts: ['a.*.test']}]}", "hosts.0"),
        ("{certificates: [{secret: missing}]}", "secret 'missing' does not exist"),
        ("{certificates: [{secret: ca-only}]}", "secret 'ca-only' holds no certificate and key"),
        ("{certificates: [{secret: a}], client_certificates: {ca: a}}", "holds no CA bundle"),
        ("{certificates: [{secret: a}], http_redirect_port: 10443}", "the listener's own port"),
    ],
)
def test_listener_tls_mistakes(tls: str, message: str) -> None:
    text = (
        "secrets:\n"
        + secret_yaml("a", A.cert, A.key)
        + f"  - name: ca-only\n    ca: {_indented(CA.cert)}"
        + f"listeners:\n  - {{name: edge, port: 10443, tls: {tls}}}\n"
    )
    found = issues(text)
    assert any(message in issue for issue in found), found


def test_a_redirect_port_clashes_like_a_listener_port() -> None:
    text = (
        "secrets:\n"
        + secret_yaml("a", A.cert, A.key)
        + (
            "listeners:\n"
            "  - {name: edge, port: 10443, tls: {certificates: [{secret: a}], http_redirect_port: 10080}}\n"
            "  - {name: plain, port: 10080}\n"
        )
    )
    assert any("port 10080 is already used by listener edge" in issue for issue in issues(text)), issues(text)


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ("{sni: x.test}", "ca: name the secret"),
        ("{verify: false, ca: a}", "verify: false checks nothing"),
        ("{ca: a}", "set sni or san"),
        ("{ca: nope, sni: x.test}", "secret 'nope' does not exist"),
    ],
)
def test_upstream_tls_mistakes(tls: str, message: str) -> None:
    upstream = f"upstreams:\n  - {{name: u, endpoints: ['10.0.0.1:443'], tls: {tls}}}\n"
    text = f"secrets:\n  - name: a\n    ca: {_indented(CA.cert)}" + upstream
    found = issues(text)
    assert any(message in issue for issue in found), found


def test_a_grpc_match_is_its_path_and_prints_as_written() -> None:
    base = "upstreams: [{name: g, endpoints: ['127.0.0.1:1'], protocol: http2}]\nroutes:\n"
    config = parse_document(
        base + "  - {name: m, upstream: g, match: {grpc: {service: a.b.Svc, method: Do}}}\n"
        "  - {name: s, upstream: g, match: {grpc: {service: a.b.Svc}}}\n",
        "gw.yaml",
    )
    method, service = config.routes
    assert method.match.path.exact == "/a.b.Svc/Do" and service.match.path.prefix == "/a.b.Svc/"
    assert "path" not in object_data(method)["match"]  # `get` prints the match as it was written
    again = base + "  - {name: m, upstream: g, match: {grpc: {service: a.b.Svc}, path: {prefix: /other}}}\n"
    assert any("set path or grpc, not both" in issue for issue in issues(again))


def test_secret_files_are_read_located_and_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = A.write(tmp_path, "a")
    document = tmp_path / "gw.yaml"
    document.write_text("secrets:\n  - {name: a, cert_file: a.pem, key_file: a-key.pem}\n" + LISTENER)
    config = load_path(document)
    (secret,) = config.secrets
    assert secret.cert == A.cert and secret.key is not None and secret.key.get_secret_value() == A.key
    assert secret.files == {}  # read: what is served and what `apply` stores is the content

    files, cache = SecretFiles(), ObjectCache()  # as the file source keeps them across saves
    with caplog.at_level(logging.WARNING):
        key.chmod(0o644)
        second = files.resolve(parse_document(document.read_text(), str(document), cache))
        third = files.resolve(parse_document(document.read_text(), str(document), cache))
    assert [r.message for r in caplog.records].count(
        "private key a-key.pem is readable by every user (mode 644): chmod 600 it"
    ) == 1  # once, not at every save
    assert second.secrets[0] is third.secrets[0]  # unchanged files: the same object (the fast path holds)
    assert set(files.read) == {cert, key}

    cert.unlink()
    document.write_text(document.read_text() + "\n")
    with pytest.raises(ConfigError) as failed:
        compile_config(load_path(document))
    assert "gw.yaml:2: secret a field cert_file: cannot read a.pem: No such file or directory" in str(failed.value)


def test_secret_ticket_keys_print_redacted() -> None:
    keys = [base64.b64encode(bytes(80)).decode()]
    secret = Secret.model_validate({"name": "t", "ticket_keys": keys})
    assert secret.model_dump(mode="json")["ticket_keys"] == [REDACTED]
    assert secret.model_dump(mode="json", context={REVEAL: True})["ticket_keys"] == keys


def test_an_etcd_secret_holds_its_text_not_files() -> None:
    from xgate.sources.etcd.layout import decode

    value = b'{"cert_file": "/etc/a.pem", "key_file": "/etc/a-key.pem"}'
    obj, found = decode("secret", "a", value, "/xgate/secret/a")
    assert obj is None and "holds its PEM text" in found[0].message and found[0].field == "cert_file"
    good = json.dumps({"cert": A.cert, "key": A.key}).encode()
    obj, found = decode("secret", "a", good, "/xgate/secret/a")
    assert found == [] and isinstance(obj, Secret)


def test_a_route_change_read_piece_by_piece_keeps_the_secrets() -> None:
    # A save that changes one route is spliced into the last revision (parse_change): its secrets must stay.
    def document(path: str) -> str:
        return (
            "secrets:\n"
            + secret_yaml("a", A.cert, A.key)
            + LISTENER
            + "upstreams:\n  - {name: u, endpoints: ['10.0.0.1:80']}\n"
            f"routes:\n  - {{name: r, upstream: u, match: {{path: {{prefix: {path}}}}}}}\n"
        )

    cache = ObjectCache()
    first = parse_document(document("/one"), "gw.yaml", cache)
    assert [secret.name for secret in first.secrets] == ["a"] and not first.issues
    second = parse_document(document("/two"), "gw.yaml", cache)
    assert second.routes[0].match.path.prefix == "/two"
    assert [secret.name for secret in second.secrets] == ["a"]
    assert not issues(document("/two"))
