"""config-dump's data: what a proxy was last sent, decoded, with every credential redacted, and who is chosen."""

from __future__ import annotations

import json

import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2 as secret_v3
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3
from google.protobuf import json_format
from tests.unit.discovery.test_stream import CONFIG, connected, request, snapshot

from xgate.discovery import typeurls
from xgate.discovery.dump import REDACTED, SECRET, DumpError, choose, config_dump, redact
from xgate.discovery.snapshot import Resource
from xgate.discovery.status import StatusRegistry, TypeStatus

KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\n-----END PRIVATE KEY-----"


def test_the_dump_holds_what_was_sent_and_acked_by_section() -> None:
    snap = snapshot()
    stream, last = connected(snap)
    dump = config_dump(stream.proxy)()
    assert [c["name"] for c in dump["resources"]["clusters"]] == ["upstream/a", "upstream/b"]
    assert [r["name"] for r in dump["resources"]["routes"]] == ["routes/public"]
    routes = [route["name"] for vh in dump["resources"]["routes"][0]["virtual_hosts"] for route in vh["routes"]]
    assert routes == ["to-a", "to-b"]
    assert dump["versions"]["routes"]["acked"] is True
    assert dump["versions"]["routes"]["sent_version"] == last[typeurls.ROUTE].version_info


def test_a_nacked_type_is_shown_as_not_acked_with_the_reason() -> None:
    snap = snapshot()
    stream, _ = connected(snap)
    changed = snapshot(CONFIG.replace("prefix: /a}", "prefix: /x}"), 2, snap)
    [route] = stream.responses(changed)
    stream.on_request(request(typeurls.ROUTE, ("routes/public",), route.nonce, "old", error="bad regex"), changed)
    dump = config_dump(stream.proxy)()
    assert dump["versions"]["routes"] == {
        "sent_version": route.version_info,
        "sent_revision": "rev2",
        "acked": False,
        "rejection": "bad regex",
    }
    assert dump["resources"]["routes"][0]["virtual_hosts"][0]["routes"][0]["match"] == {"prefix": "/x"}


def test_private_keys_and_credentials_never_appear() -> None:
    secret = secret_v3.Secret(name="tls/public")
    secret.tls_certificate.private_key.inline_string = KEY
    secret.tls_certificate.certificate_chain.filename = "/etc/certs/chain.pem"
    secret.tls_certificate.password.inline_bytes = b"hunter2"
    context = tls_v3.DownstreamTlsContext()
    context.common_tls_context.tls_certificates.add().private_key.inline_string = KEY
    proxy = StatusRegistry().connect("peer")
    data = secret.SerializeToString()
    proxy.types[SECRET] = TypeStatus(sent=(Resource("tls/public", "v", SECRET, data, b"", None),), sent_version="v")
    text = json.dumps(config_dump(proxy)())
    assert "PRIVATE KEY" not in text and "MIIEvQ" not in text and "hunter2" not in text and "aHVudGVyMg" not in text
    assert "/etc/certs/chain.pem" in text  # where the certificate is, not a secret
    section = config_dump(proxy)()["resources"]["secrets"][0]
    assert section["tls_certificate"]["private_key"] == {"inline_string": REDACTED}
    nested = redact(json_format.MessageToDict(context, preserving_proto_field_name=True))
    assert "MIIEvQ" not in json.dumps(nested)
    headers = redact({"request_headers_to_add": [{"header": {"key": "Authorization", "value": "Bearer abc"}}]})
    assert headers["request_headers_to_add"][0]["header"]["value"] == REDACTED


def test_choosing_the_consumer() -> None:
    registry = StatusRegistry()
    one = registry.connect("127.0.0.1:1")
    one.node_id = "edge-1"
    assert choose(registry.connected.values(), None) is one
    two = registry.connect("127.0.0.1:2")
    two.node_id = "edge-2"
    with pytest.raises(DumpError, match="2 Envoys are connected; name one with --node: edge-1, edge-2"):
        choose(registry.connected.values(), None)
    assert choose(registry.connected.values(), "edge-2") is two
    with pytest.raises(DumpError, match=r"node id 'edge-3' is connected \(connected: edge-1, edge-2\)"):
        choose(registry.connected.values(), "edge-3")
    with pytest.raises(DumpError, match="no Envoy is connected"):
        choose([], None)


def test_what_was_sent_is_read_when_asked_and_decoded_later() -> None:
    snap = snapshot()
    stream, _ = connected(snap)
    decode = config_dump(stream.proxy)  # on the event loop
    stream.responses(snapshot(CONFIG.replace("prefix: /a}", "prefix: /x}"), 2, snap))  # a change meanwhile
    routes = decode()["resources"]["routes"]  # in a worker thread: what was asked for, not a mix
    assert routes[0]["virtual_hosts"][0]["routes"][0]["match"] == {"prefix": "/a"}
    assert config_dump(stream.proxy)()["resources"]["routes"][0]["virtual_hosts"][0]["routes"][0]["match"] == {
        "prefix": "/x"
    }
