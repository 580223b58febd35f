"""What a config source hands the control plane: one revision of its objects."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from xgate.config.load import ConfigSet
from xgate.config.schema import Route
from xgate.errors import ConfigError, ConfigIssue


@dataclass(frozen=True)
class Revision:
    """A parsed config (or the error that stopped it) with its revision id.

    `warnings` are per-object issues of a source that applies objects one by one (etcd): those objects
    keep their last good version (or are left out), everything else applies.
    """

    revision: str
    config: ConfigSet | None
    error: ConfigError | None = None
    seen_at: float = 0.0  # time.perf_counter() when the source started reading this revision
    warnings: tuple[ConfigIssue, ...] = ()
    # Sources that know: the routes changed since their previous revision (name -> new version, None when
    # gone), when nothing else changed. None: anything may have changed.
    changes: Mapping[str, Route | None] | None = None


def revision_of(text: str | bytes) -> str:
    """A config revision id: a digest of the source content, so the same content is the same revision."""
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:12]
