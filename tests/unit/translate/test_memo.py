"""The caches behind fast reloads give exactly what a translation from scratch gives, and reuse work."""

from __future__ import annotations

from xgate.config.load import ObjectCache, parse_document
from xgate.ir import build_ir
from xgate.translate import Translator, translate

BEFORE = """
plugins: {cors: {allow_origins: ["*"]}}
listeners: [{name: a, port: 1}, {name: b, port: 2, plugins: {cors: false}}]
upstreams: [{name: u, endpoints: ["127.0.0.1:1"]}, {name: v, endpoints: ["127.0.0.1:2"]}]
routes:
  - {name: one, upstream: u, match: {path: {prefix: /one}}}
  - {name: two, upstream: v, match: {path: {prefix: /two}}, plugins: {cors: {allow_origins: ["https://x.io"]}}}
  - {name: three, direct_response: {status: 204}}
"""
AFTER = (
    BEFORE.replace("prefix: /one", "prefix: /uno")
    .replace('"https://x.io"', '"https://y.io"')
    .replace('"127.0.0.1:2"', '"127.0.0.1:3"')
)


def test_cached_parse_and_memoized_translation_equal_a_fresh_one() -> None:
    cache, translator = ObjectCache(), Translator()
    first = parse_document(BEFORE, "t", cache)
    assert translator.translate(build_ir(first)) == translate(build_ir(parse_document(BEFORE, "t")))
    second = parse_document(AFTER, "t", cache)
    memoized = translator.translate(build_ir(second))
    fresh = translate(build_ir(parse_document(AFTER, "t")))
    assert memoized == fresh
    # Unchanged objects are the very same objects, changed ones are new.
    assert second.routes[2] is first.routes[2]
    assert second.routes[0] is not first.routes[0]
    assert second.upstreams[0] is first.upstreams[0]


def test_unchanged_route_keeps_its_proto_and_changed_plugin_settings_do_not() -> None:
    cache, translator = ObjectCache(), Translator()
    one = translator.translate(build_ir(parse_document(BEFORE, "t", cache)))
    two = translator.translate(build_ir(parse_document(AFTER.replace("/uno", "/one"), "t", cache)))
    routes_one = one.route_config("routes/a").virtual_hosts[0].routes
    routes_two = two.route_config("routes/a").virtual_hosts[0].routes
    assert routes_two[0] == routes_one[0]
    assert routes_two[1] != routes_one[1]  # cors origin changed
    assert two.clusters["upstream/u"] is one.clusters["upstream/u"]
    assert two.endpoints["upstream/v"] != one.endpoints["upstream/v"]
