"""The consistency check finds every name a snapshot gives and does not serve."""

from __future__ import annotations

from xgate.api import DYEING_SETTINGS, POLICY, RATE_LIMIT
from xgate.config.load import parse_document
from xgate.discovery import typeurls
from xgate.discovery.consistency import problems
from xgate.discovery.snapshot import Snapshot, build_snapshot
from xgate.pipeline import compile_config

CONFIG = """
plugins:
  dyeing: {mode: ext_proc, rules: [{stage: canary, sticky: {percent: 10, key: {header: x-user}}}]}
  policy: {policies: {admins: "pkg.module:admins"}}
listeners: [{name: public, port: 10000}]
upstreams:
  - {name: a, endpoints: ["127.0.0.1:8001"]}
  - {name: b, endpoints: ["127.0.0.1:8002"], health_check: {}}
routes:
  - {name: to-a, match: {path: {prefix: /a}}, upstream: a, canary: {stage: canary, upstream: b},
     plugins: {policy: {name: admins}, rate_limit: {global: {requests: 5}}}}
"""


def snapshot() -> Snapshot:
    return build_snapshot(compile_config(parse_document(CONFIG, "t")).resources, "r", 1)


def without(snap: Snapshot, type_url: str, name: str | None = None) -> Snapshot:
    kept = {url: dict(found) for url, found in snap.resources.items()}
    if name is None:
        kept.pop(type_url)
    else:
        del kept[type_url][name]
    return Snapshot(serial=2, revision="r", resources=kept)


def test_a_whole_snapshot_has_no_problems() -> None:
    assert problems(snapshot()) == []


def test_every_missing_name_is_found() -> None:
    snap = snapshot()
    assert problems(without(snap, typeurls.CLUSTER, "upstream/a")) == [
        "aggregate cluster fallback/b/a names cluster upstream/a, which is not served",
        "route to-a of routes/public (public/*) sends to cluster upstream/a, which is not served",
    ]
    missing_member = problems(without(snap, typeurls.CLUSTER, "upstream/b"))
    assert any("aggregate cluster fallback/b/a names cluster upstream/b" in line for line in missing_member)
    assert problems(without(snap, typeurls.ENDPOINT, "upstream/a")) == [
        "cluster upstream/a takes its endpoints over EDS, and none are served"
    ]
    assert problems(without(snap, typeurls.ROUTE, "routes/public")) == [
        "listener listener/public reads route config routes/public, which is not served"
    ]
    assert any("names dyeing settings" in line for line in problems(without(snap, DYEING_SETTINGS)))
    assert any("runs policy admins" in line for line in problems(without(snap, POLICY)))
    assert any("global limit to-a" in line for line in problems(without(snap, RATE_LIMIT)))
