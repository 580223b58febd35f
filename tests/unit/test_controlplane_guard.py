"""The control plane holds back a change that would leave Envoys serving nothing (from a file or etcd), reports
it like a rejection, recovers from it exactly, and logs how many routes an incremental change really changed."""

from __future__ import annotations

import asyncio
import logging

import pytest
from envoy.config.route.v3 import route_pb2 as route_v3

from xgate.config.load import ObjectCache, parse_document
from xgate.controlplane import ControlPlane
from xgate.discovery import typeurls
from xgate.sources.revision import Revision, revision_of

BASE = """
listeners: [{name: l, port: 10000}]
upstreams: [{name: u, endpoints: ["127.0.0.1:1"]}]
routes:
"""
ROUTES = {name: f"  - {{name: {name}, match: {{path: {{prefix: /{name}}}}}, upstream: u}}\n" for name in "abcd"}


class Source:
    """Revisions as a source makes them: one object cache, so unchanged objects stay the same objects."""

    def __init__(self, name: str = "gw.yaml") -> None:
        self.name = name
        self.cache = ObjectCache()

    def revision(self, text: str, changes: dict[str, object] | None = None, revision: str = "") -> Revision:
        config = parse_document(text, self.name, self.cache)
        return Revision(revision=revision or revision_of(text), config=config, changes=changes)  # type: ignore[arg-type]


def config_text(*routes: str) -> str:
    return BASE + "".join(ROUTES[name] for name in routes)


def served_routes(plane: ControlPlane) -> set[str]:
    snapshot = plane.cache.snapshot
    assert snapshot is not None
    names: set[str] = set()
    for resource in snapshot.resources[typeurls.ROUTE].values():
        config = route_v3.RouteConfiguration.FromString(resource.packed.value)
        names |= {route.name for host in config.virtual_hosts for route in host.routes}
    return names


@pytest.mark.parametrize("empty", ["", "{}", "~", "xgate: v1\n", "listeners: []\n", "routes: []\n"])
async def test_a_config_without_listeners_is_held_back_and_the_last_good_one_serves(empty: str) -> None:
    plane, source = ControlPlane(), Source()
    good = config_text("a", "b")
    await plane.on_revision(source.revision(good))
    before = plane.cache.snapshot
    await plane.on_revision(source.revision(empty))
    assert plane.cache.snapshot is before  # nothing new went to any Envoy
    assert plane.state.applied == revision_of(good)
    assert plane.state.rejected == revision_of(empty)
    [issue] = plane.state.issues
    assert issue.startswith("gw.yaml: document: held back: it removes every listener (1 served)"), issue
    assert "--allow-empty" in issue
    # The next good save serves and clears the report.
    await plane.on_revision(source.revision(config_text("a")))
    assert plane.state.rejected is None and plane.state.issues == []
    assert served_routes(plane) == {"a"}


async def test_a_config_without_listeners_is_held_back_at_start_too() -> None:
    plane = ControlPlane()
    await plane.on_revision(Source().revision(""))
    assert plane.cache.snapshot is None and plane.state.applied is None
    assert "held back: it has no listener" in plane.state.issues[0]


async def test_removing_every_route_is_held_back_but_one_remaining_is_served() -> None:
    plane, source = ControlPlane(), Source()
    await plane.on_revision(source.revision(config_text("a", "b")))
    await plane.on_revision(source.revision(config_text()))
    assert "held back: it removes every route (2 served)" in plane.state.issues[0]
    assert served_routes(plane) == {"a", "b"}
    await plane.on_revision(source.revision(config_text("b")))
    assert plane.state.issues == [] and served_routes(plane) == {"b"}


async def test_allow_empty_serves_what_it_is_given() -> None:
    plane, source = ControlPlane(allow_empty=True), Source()
    await plane.on_revision(source.revision(config_text("a")))
    await plane.on_revision(source.revision(config_text()))
    assert plane.state.issues == [] and served_routes(plane) == set()
    await plane.on_revision(source.revision(""))
    assert plane.state.issues == [] and plane.state.applied == revision_of("")
    assert plane.cache.snapshot is not None and not plane.cache.snapshot.resources[typeurls.LISTENER]


async def test_etcd_deleting_every_route_is_held_back_and_its_next_change_serves_exactly_what_etcd_holds() -> None:
    """etcd's revisions list the routes changed since its previous revision, held back or not: after a held-back
    one, the next must be compared with what is served, or deleted routes would come back to life."""
    plane, source = ControlPlane(), Source("etcd /xgate/")
    await plane.on_revision(source.revision(config_text("a", "b", "c"), revision="etcd-1"), "etcd")
    deleted = source.revision(config_text(), {"a": None, "b": None, "c": None}, revision="etcd-4")
    await plane.on_revision(deleted, "etcd")
    assert plane.state.rejected == "etcd-4"
    assert "etcd /xgate/: document: held back: it removes every route (3 served)" in plane.state.issues[0]
    assert served_routes(plane) == {"a", "b", "c"}
    added = source.revision(config_text("d"), {"d": None}, revision="etcd-5")
    added = Revision(added.revision, added.config, changes={"d": added.config.routes[0]})  # type: ignore[union-attr]
    await plane.on_revision(added, "etcd")
    assert plane.state.rejected is None
    assert served_routes(plane) == {"d"}


async def test_a_held_back_revision_serves_once_another_source_completes_it() -> None:
    """A file of local routes is read before etcd, which has the listeners: alone it has no listener."""
    plane = ControlPlane()
    local = "routes:\n  - {name: local, match: {path: {prefix: /local}}, direct_response: {status: 200}}\n"
    await plane.on_revision(Source().revision(local), "file")
    assert "held back: it has no listener" in plane.state.issues[0]
    await plane.on_revision(Source("etcd /xgate/").revision(config_text("a"), revision="etcd-3"), "etcd")
    assert plane.state.issues == [] and plane.state.rejected is None
    assert plane.state.applied == f"{revision_of(local)}+etcd-3"
    assert served_routes(plane) == {"a", "local"}


async def test_the_log_counts_the_routes_a_file_save_changed(caplog: pytest.LogCaptureFixture) -> None:
    plane, source = ControlPlane(), Source()
    caplog.set_level(logging.INFO, logger="xgate.controlplane")
    await plane.on_revision(source.revision(config_text("a", "b", "c")))
    await asyncio.sleep(0)
    assert "1 listeners, 3 routes, 1 upstreams" in caplog.text  # a full compile says what it served
    caplog.clear()
    changed = config_text("a", "b").replace("prefix: /a", "prefix: /a2")  # a changed, c removed
    await plane.on_revision(source.revision(changed))
    await asyncio.sleep(0)  # the line is logged on the loop's next turn
    applied = [record.getMessage() for record in caplog.records if "applied revision" in record.getMessage()]
    assert len(applied) == 1 and "2 route changes applied incrementally" in applied[0], applied
    caplog.clear()
    await plane.on_revision(source.revision(changed.replace("prefix: /b", "prefix: /b2")))
    await asyncio.sleep(0)
    assert "1 route change applied incrementally" in caplog.text, caplog.text
