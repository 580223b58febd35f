"""TLS in translation and delivery: secrets go first and by name, the fast path keeps them, output is redacted."""

from __future__ import annotations

import json
from dataclasses import replace

from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_v3

from xgate.cli.render import redact
from xgate.config.load import parse_document
from xgate.config.schema import Upstream
from xgate.discovery import typeurls
from xgate.discovery.snapshot import build_snapshot
from xgate.discovery.status import StatusRegistry
from xgate.discovery.stream import AdsStream
from xgate.incremental import IncrementalCompiler
from xgate.pipeline import compile_config
from xgate.testing.tls import TestCA
from xgate.translate.cluster import HTTP_OPTIONS, translate_cluster

CA = TestCA()


def _config(issued_cert: str, issued_key: str, extra_route: str = "") -> str:
    def block(pem: str) -> str:
        return "|\n" + "".join(f"      {line}\n" for line in pem.splitlines())

    return (
        f"secrets:\n  - name: a\n    cert: {block(issued_cert)}    key: {block(issued_key)}"
        "listeners:\n  - {name: edge, port: 10443, tls: {certificates: [{secret: a, hosts: [a.test]}]}}\n"
        "upstreams: [{name: web, endpoints: ['127.0.0.1:8000']}]\n"
        f"routes:\n  - {{name: web, upstream: web}}\n{extra_route}"
    )


def test_secrets_are_pushed_first_asked_for_by_name_and_served_to_envoys() -> None:
    assert typeurls.PUSH_ORDER[0] == typeurls.SECRET
    assert typeurls.SECRET in typeurls.ENVOY_TYPES and typeurls.SECRET not in typeurls.WILDCARD_TYPES
    issued = CA.issue("a.test")
    snap = build_snapshot(compile_config(parse_document(_config(issued.cert, issued.key), "t")).resources, "r", 1)
    assert list(snap.resources[typeurls.SECRET]) == ["secret/a"]
    stream = AdsStream(StatusRegistry().connect("peer"))
    for type_url in (typeurls.CLUSTER, typeurls.LISTENER):
        stream.on_request(_request(type_url), snap)
    stream.on_request(_request(typeurls.SECRET, ("secret/a",)), snap)
    order = [response.type_url for response in stream.responses(snap)]
    assert order == [typeurls.SECRET, typeurls.CLUSTER, typeurls.LISTENER]


def _request(type_url: str, names: tuple[str, ...] = ()) -> object:
    from envoy.service.discovery.v3 import discovery_pb2

    return discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)


def test_a_route_change_on_the_fast_path_keeps_the_secrets() -> None:
    issued = CA.issue("a.test")
    base = parse_document(_config(issued.cert, issued.key), "t")
    compiled = compile_config(base, "0", lenient=True)
    incremental = IncrementalCompiler()
    incremental.reset(base, compiled.ir, compiled.context, compiled.resources)
    changed = parse_document(_config(issued.cert, issued.key, "  - {name: more, upstream: web}\n"), "t")
    # The same listener, upstream and secret objects (as the file source's caches hand back): routes changed.
    changed = replace(changed, secrets=base.secrets, listeners=base.listeners, upstreams=base.upstreams)
    result = incremental.apply(changed, {"more": changed.routes[1]})
    assert result is not None
    resources, _ = result
    assert set(resources.secrets) == {"secret/a"} == set(compiled.resources.secrets)


def test_redaction_covers_keys_ticket_keys_and_secret_jwk_members() -> None:
    data = {
        "tls_certificate": {"certificate_chain": {"inline_bytes": "Q0VSVA=="}, "private_key": {"inline_bytes": "S0VZ"}},
        "session_ticket_keys": {"keys": [{"inline_bytes": "VElDS0VU"}]},
        "local_jwks": {"inline_string": json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]})},
        "jwks": {"keys": [{"kty": "RSA", "n": "public", "e": "AQAB", "d": "private"}]},
    }
    shown = json.dumps(redact(data))
    for secret in ("S0VZ", "VElDS0VU", "c2VjcmV0", '"private"'):
        assert secret not in shown
    for public in ("Q0VSVA==", '"public"', "AQAB", "HS256"):
        assert public in shown


def test_upstream_alpn_keeps_the_upstreams_other_http_options() -> None:
    # One HttpProtocolOptions per cluster: ALPN's auto_config must not replace the idle timeout next to it.
    upstream = Upstream.model_validate(
        {"name": "api", "endpoints": ["10.0.0.1:443"], "idle_timeout": "30s", "tls": {"verify": False, "alpn": True}}
    )
    options = http_options_v3.HttpProtocolOptions()
    translate_cluster(upstream).typed_extension_protocol_options[HTTP_OPTIONS].Unpack(options)
    assert options.WhichOneof("upstream_protocol_options") == "auto_config"
    assert options.auto_config.HasField("http2_protocol_options")
    assert options.common_http_protocol_options.idle_timeout.seconds == 30
