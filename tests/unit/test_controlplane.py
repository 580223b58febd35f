"""The control plane logs how many routes an incremental change really changed."""

from __future__ import annotations

import asyncio
import logging

import pytest
from envoy.config.route.v3 import route_pb2 as route_v3

from xgate.config.load import ObjectCache, parse_document
from xgate.controlplane import ControlPlane
from xgate.discovery import typeurls
from xgate.pipeline import revision_of
from xgate.sources.revision import Revision

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
