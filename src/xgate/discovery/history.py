"""The last few revisions served and how long each took to reach each consumer (the dashboard's chart)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Revision:
    revision: str
    published_at: float
    answers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


class RevisionHistory:
    """Revisions in the order they were served (at most `keep`), each with every consumer's first answer: the
    seconds from publishing to its ACK of all of it, or its NACK's message."""

    def __init__(self, keep: int = 20) -> None:
        self._keep = keep
        self._revisions: OrderedDict[str, _Revision] = OrderedDict()

    def published(self, revision: str, at: float) -> None:
        if revision in self._revisions:
            return  # the services' and the Envoys' halves of one revision, or a re-publish of the same content
        self._revisions[revision] = _Revision(revision, at)
        while len(self._revisions) > self._keep:
            self._revisions.popitem(last=False)

    def answered(
        self, kind: str, node: str, revision: str, nack: str | None, connected_at: float = 0.0, at: float | None = None
    ) -> None:
        """A consumer's answer; one that connected after the revision was published counts from its connecting
        (marked `on_connect`: that is start-up, not propagation)."""
        entry = self._revisions.get(revision)
        if entry is None or (kind, node) in entry.answers:
            return  # a revision published before this control plane started, or an answer already recorded
        since = max(entry.published_at, connected_at)
        seconds = max(0.0, (time.time() if at is None else at) - since)
        entry.answers[(kind, node)] = {
            "kind": kind,
            "node": node,
            "seconds": round(seconds, 4),
            "nack": nack,
            "on_connect": connected_at > entry.published_at,
        }

    def report(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [
            {
                "revision": entry.revision,
                "published_at": entry.published_at,
                "answers": sorted(entry.answers.values(), key=lambda answer: (answer["kind"], answer["node"])),
            }
            for entry in reversed(self._revisions.values())
        ]
