"""An in-memory etcd for unit tests of the etcd source: revisions, history, prefix watches, compaction, outages.

It satisfies `xgate.sources.etcd.kv.KeyValueStore` the way etcd does as seen through `EtcdClient`: one revision
per transaction, a watch that first says it is up, then sends the history from its start revision in one batch,
then each transaction as it commits. An outage (or a refusal) is between the source and etcd: reads and watches
fail, an open watch ends and the responses it had not delivered are lost, while writes by the test still go
through, as another writer's would.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncGenerator, Iterable, Mapping

from xgate.sources.etcd.kv import CompactedError, EtcdUnavailableError, KeyValue, WatchEvent

Batch = tuple[int, list[WatchEvent]]


def _bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


class FakeEtcd:
    """etcd in memory, for one test; the test's writes are synchronous and reach open watches at once."""

    def __init__(self) -> None:
        self.revision = 1  # an empty etcd is at revision 1
        self.compacted = 0  # history before this revision is gone
        self.reads = 0  # get_prefix calls answered
        self.watches: list[int] = []  # the start revision of every watch asked for, refused ones included
        self._data: dict[bytes, KeyValue] = {}
        self._history: list[Batch] = []
        self._open: list[tuple[bytes, asyncio.Queue[Batch | Exception]]] = []
        self._failure: Exception | None = None

    # -- what the test does -----------------------------------------------------------------------------------

    def txn(self, puts: Mapping[str | bytes, str | bytes] | None = None, deletes: Iterable[str | bytes] = ()) -> int:
        """Put and delete keys in one transaction; return the store revision after it. Deleting keys that do not
        exist alone changes nothing (etcd does not count a revision for it)."""
        revision = self.revision + 1
        events = [WatchEvent(_bytes(key), _bytes(value), revision) for key, value in (puts or {}).items()]
        events += [WatchEvent(_bytes(key), b"", revision, deleted=True) for key in deletes if _bytes(key) in self._data]
        if not events:
            return self.revision
        for event in events:
            if event.deleted:
                del self._data[event.key]
            else:
                self._data[event.key] = KeyValue(event.key, event.value, revision)
        self.revision = revision
        self._history.append((revision, events))
        for prefix, queue in self._open:
            mine = [event for event in events if event.key.startswith(prefix)]
            if mine:
                queue.put_nowait((revision, mine))
        return revision

    def put(self, key: str | bytes, value: str | bytes) -> int:
        return self.txn({key: value})

    def delete(self, key: str | bytes) -> int:
        return self.txn(deletes=[key])

    def compact(self, revision: int | None = None) -> None:
        """Forget the history before `revision` (default: the current one), as `etcdctl compact` does."""
        revision = self.revision if revision is None else revision
        assert revision <= self.revision, "etcd refuses to compact a future revision"
        self.compacted = max(self.compacted, revision)
        self._history = [batch for batch in self._history if batch[0] >= self.compacted]

    def progress(self) -> None:
        """A progress notification on every open watch: every change up to the current revision was sent."""
        for _, queue in self._open:
            queue.put_nowait((self.revision, []))

    def outage(self) -> None:
        """etcd is out of reach: reads and watches raise EtcdUnavailableError until `restore()`."""
        self.fail(EtcdUnavailableError("etcd unavailable: fake outage"))

    def fail(self, error: Exception) -> None:
        """Reads and watches raise `error` until `restore()`; open watches end with it, their undelivered
        responses lost."""
        self._failure = error
        for _, queue in self._open:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(error)

    def restore(self) -> None:
        self._failure = None

    def state(self, prefix: str | bytes = b"") -> dict[str, str]:
        """What etcd holds under `prefix`: key -> value, as text."""
        start = _bytes(prefix)
        return {kv.key.decode(): kv.value.decode() for kv in self._data.values() if kv.key.startswith(start)}

    # -- KeyValueStore -------------------------------------------------------------------------------------------

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        self._check()
        self.reads += 1
        return self.revision, [self._data[key] for key in sorted(self._data) if key.startswith(prefix)]

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncGenerator[Batch, None]:
        self.watches.append(start_revision)
        self._check()
        # The backlog and the registration happen together, so a transaction lands in exactly one of them.
        compacted = start_revision < self.compacted
        backlog = [
            event
            for revision, events in self._history
            if revision >= start_revision
            for event in events
            if event.key.startswith(prefix)
        ]
        queue: asyncio.Queue[Batch | Exception] = asyncio.Queue()
        watch = (prefix, queue)
        self._open.append(watch)
        try:
            yield start_revision - 1, []  # created (etcd says so before it finds the revision compacted)
            if compacted:
                raise CompactedError(self.compacted)
            if backlog:
                yield backlog[-1].mod_revision, backlog
            while not isinstance(batch := await queue.get(), Exception):
                yield batch
            raise copy.copy(batch)
        finally:
            self._open.remove(watch)

    def _check(self) -> None:
        if self._failure is not None:
            raise copy.copy(self._failure)  # a fresh one each time, as a client raises
