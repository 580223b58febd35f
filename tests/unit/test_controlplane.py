"""The control plane's rules without sockets: how sources merge, what a refused revision leaves, what a lenient
(etcd) revision serves for an object that went bad."""

from __future__ import annotations

from dataclasses import replace

from envoy.config.route.v3 import route_pb2 as route_v3

from xgate.config.load import ConfigSet, parse_document
from xgate.controlplane import ControlPlane, merge_inputs
from xgate.discovery import typeurls
from xgate.errors import ConfigError, ConfigIssue
from xgate.sources.revision import Revision, revision_of

BASE = """
listeners: [{name: public, port: 10000}]
upstreams: [{name: a, endpoints: ["127.0.0.1:8001"]}, {name: b, endpoints: ["127.0.0.1:8002"]}]
routes:
  - {name: one, match: {path: {prefix: /one}}, upstream: a}
  - {name: two, match: {path: {prefix: /two}}, upstream: b}
"""


def file_revision(text: str) -> Revision:
    return Revision(revision=revision_of(text), config=parse_document(text, "gateway.yaml"))


def etcd_revision(config: ConfigSet, number: int) -> Revision:
    return Revision(revision=f"etcd-{number}", config=replace(config, source="etcd /xgate/"))


def routes_of(plane: ControlPlane) -> set[str]:
    snapshot = plane.cache.snapshot
    assert snapshot is not None
    table = snapshot.resources[typeurls.ROUTE]["routes/public"]
    config = route_v3.RouteConfiguration.FromString(table.data)
    return {route.name for host in config.virtual_hosts for route in host.routes}


def test_the_file_overrides_etcd_object_by_object_and_says_so() -> None:
    etcd = parse_document(BASE, "etcd")
    local = parse_document(
        "routes: [{name: one, match: {path: {prefix: /local}}, upstream: b}]\nplugins: {cors: {allow_origins: ['*']}}",
        "local.yaml",
    )
    etcd = replace(etcd, plugins={"cors": {"allow_origins": ["https://x.example"]}})
    merged, conflicts = merge_inputs({"file": Revision("f", local), "etcd": Revision("e", etcd)})
    routes = {route.name: route for route in merged.routes}
    assert routes["one"].match.path.prefix == "/local" and routes["two"].upstream == "b"
    assert merged.plugins["cors"] == {"allow_origins": ["*"]}
    assert conflicts == [
        "route one: defined in local.yaml and in etcd; the file version is served",
        "plugin cors: defaults set by file and etcd; file's are used",
    ]


async def test_a_refused_file_revision_leaves_the_last_good_snapshot_and_is_reported() -> None:
    plane = ControlPlane()
    await plane.on_revision(file_revision(BASE))
    good = plane.cache.snapshot
    assert good is not None and plane.state.applied == revision_of(BASE)
    bad = BASE.replace("upstream: b}", "upstream: nowhere}")
    await plane.on_revision(file_revision(bad))
    assert plane.cache.snapshot is good  # nothing was published
    assert plane.state.applied == revision_of(BASE) and plane.state.rejected == revision_of(bad)
    assert any("upstream 'nowhere' does not exist" in issue for issue in plane.state.issues)
    again = BASE.replace("/two", "/2")
    await plane.on_revision(file_revision(again))
    assert plane.state.applied == revision_of(again) and plane.state.rejected is None and plane.state.issues == []
    await plane.rollout.close()


async def test_an_unreadable_revision_is_reported_and_changes_nothing() -> None:
    plane = ControlPlane()
    await plane.on_revision(file_revision(BASE))
    good = plane.cache.snapshot
    error = ConfigError([ConfigIssue("gateway.yaml", "document", "", "cannot read: not UTF-8")])
    await plane.on_revision(Revision(revision="", config=None, error=error))
    assert plane.cache.snapshot is good
    assert plane.state.issues == ["gateway.yaml: document: cannot read: not UTF-8"]
    await plane.rollout.close()


async def test_etcd_keeps_serving_the_last_good_version_of_an_object_that_went_bad() -> None:
    plane = ControlPlane()
    base = parse_document(BASE, "etcd")
    await plane.on_revision(etcd_revision(base, 1), "etcd")
    assert routes_of(plane) == {"one", "two"}
    broken = [
        route if route.name != "two" else route.model_copy(update={"upstream": "nowhere"}) for route in base.routes
    ]
    await plane.on_revision(etcd_revision(replace(base, routes=tuple(broken)), 2), "etcd")
    assert plane.state.applied == "etcd-2" and plane.state.rejected is None  # the rest applies
    assert routes_of(plane) == {"one", "two"}  # two: its last good version
    assert any("two" in warning and "serving its last good version" in warning for warning in plane.state.warnings)
    new = base.routes[0].model_copy(update={"name": "three", "upstream": "nowhere"})
    await plane.on_revision(etcd_revision(replace(base, routes=(*base.routes, new)), 3), "etcd")
    assert routes_of(plane) == {"one", "two"}  # three never had a good version: not served
    assert any("three" in warning for warning in plane.state.warnings)
    await plane.rollout.close()
