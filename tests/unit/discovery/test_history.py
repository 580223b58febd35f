"""The recent revisions: newest first, each consumer's first answer once, timed from publish (or its connect)."""

from __future__ import annotations

from xgate.discovery.history import RevisionHistory


def test_answers_are_timed_from_publish_or_connect_and_old_revisions_drop_out() -> None:
    history = RevisionHistory(keep=2)
    history.published("r1", at=100.0)
    history.answered("envoy", "e1", "r1", None, connected_at=50.0, at=100.25)
    history.answered("envoy", "e1", "r1", "late duplicate", connected_at=50.0, at=101.0)  # the first answer stays
    history.answered("envoy", "e2", "r1", None, connected_at=103.0, at=103.5)  # joined later: from its connect
    history.published("r2", at=110.0)
    history.published("r2", at=111.0)  # the Envoys' half of a revision the services had first: no restart
    history.answered("authz", "a1", "r2", "bad policy", connected_at=50.0, at=110.5)
    history.answered("envoy", "e1", "unknown", None, at=120.0)  # published before this control plane started
    assert history.report() == [
        {
            "revision": "r2",
            "published_at": 110.0,
            "answers": [{"kind": "authz", "node": "a1", "seconds": 0.5, "nack": "bad policy", "on_connect": False}],
        },
        {
            "revision": "r1",
            "published_at": 100.0,
            "answers": [
                {"kind": "envoy", "node": "e1", "seconds": 0.25, "nack": None, "on_connect": False},
                {"kind": "envoy", "node": "e2", "seconds": 0.5, "nack": None, "on_connect": True},
            ],
        },
    ]
    history.published("r3", at=120.0)
    assert [entry["revision"] for entry in history.report()] == ["r3", "r2"]
