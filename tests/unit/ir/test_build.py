"""IR: references, port clashes, plugin inheritance and switch-off, routes per listener."""

from __future__ import annotations

import pytest

from xgate.config.load import parse_document
from xgate.errors import ConfigError
from xgate.ir import build_ir
from xgate.plugins.cors import CorsSettings

TEXT = """
plugins: {cors: {allow_origins: ["*"]}}
listeners:
  - {name: edge, port: 80}
  - {name: admin, address: 127.0.0.1, port: 81, plugins: {cors: false}}
upstreams: [{name: app, endpoints: ["127.0.0.1:1"]}]
routes:
  - {name: all, upstream: app}
  - {name: edge-only, listeners: [edge], upstream: app, plugins: {cors: {allow_origins: ["https://x.io"]}}}
"""


def test_routes_attach_to_listeners_and_plugins_inherit() -> None:
    ir = build_ir(parse_document(TEXT, "t"))
    by_name = {listener.name: listener for listener in ir.listeners}
    assert [route.name for route in by_name["edge"].routes] == ["all", "edge-only"]
    assert [route.name for route in by_name["admin"].routes] == ["all"]
    edge_all, edge_only = by_name["edge"].routes
    assert edge_all.plugins["cors"] == CorsSettings(allow_origins=("*",))
    assert edge_only.plugins["cors"] == CorsSettings(allow_origins=("https://x.io",))
    (admin_all,) = by_name["admin"].routes
    assert admin_all.plugins == {} and admin_all.disabled == {"cors"}
    assert by_name["edge"].filters == ("cors",) and by_name["admin"].filters == ()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("upstream: app}\n  - {name: edge-only", "upstream: nope}\n  - {name: edge-only"),
            "route all field upstream: upstream 'nope' does not exist",
        ),
        (
            ("listeners: [edge]", "listeners: [edgy]"),
            "route edge-only field listeners.0: listener 'edgy' does not exist",
        ),
        (("port: 81", "port: 80"), "listener admin field port: port 80 is already used by listener edge"),
        (("cors: false", "corz: {}"), "listener admin field plugins.corz: unknown plugin"),
        (('["https://x.io"]', '["x.io"]'), "plugins.cors.allow_origins: origin 'x.io' must be"),
    ],
)
def test_cross_object_mistakes(change: tuple[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_ir(parse_document(TEXT.replace(*change), "t"))
    assert any(expected in str(issue) for issue in caught.value.issues), caught.value


def test_distinct_addresses_may_share_a_port() -> None:
    text = TEXT.replace("{name: edge, port: 80}", "{name: edge, address: 127.0.0.2, port: 81}")
    assert len(build_ir(parse_document(text, "t")).listeners) == 2
