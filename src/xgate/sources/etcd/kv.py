"""What the etcd source needs from a key-value store: a prefix read, a prefix watch, and the errors they raise.

`EtcdClient` is the real one; unit tests pass an in-memory store of the same shape (the way httpx takes a
MockTransport), so resume, compaction and outages are tested without a server and without timing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from xgate.errors import XgateError


class EtcdUnavailableError(XgateError):
    """etcd could not be reached, or has no leader; the caller retries."""


class EtcdRequestError(XgateError):
    """etcd refused a request (permission, a limit such as --max-txn-ops, a bad argument); retrying the same
    request will not help."""


class CompactedError(XgateError):
    """A watch asked for a revision etcd has compacted away: re-read everything, then watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted; etcd keeps history from {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as read: its value and the store revision that last modified it."""

    key: bytes
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change a watch saw: `key` was put (to `value`) or deleted (`value` empty) at `mod_revision`."""

    key: bytes
    value: bytes
    mod_revision: int
    deleted: bool = False


class KeyValueStore(Protocol):
    """A store the etcd source can follow. Every call raises EtcdUnavailableError (retry later) or
    EtcdRequestError (refused; retrying the same call will not help)."""

    async def get_prefix(self, prefix: bytes) -> tuple[int, Sequence[KeyValue]]:
        """Every key under `prefix`, and the store revision they were read at."""
        ...

    def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncGenerator[tuple[int, list[WatchEvent]], None]:
        """Yield (revision, events) for every change under `prefix` from `start_revision` on, in order, each
        once; the events of one transaction come in one batch. A batch without events says every change up
        to `revision` was sent (the first one, (start_revision - 1, []), says the watch is up). Raises
        CompactedError when `start_revision` is older than the history the store keeps; ends only by
        raising (EtcdUnavailableError when the connection is lost)."""
        ...
