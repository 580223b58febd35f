"""Files the served config reads besides itself (a jwt provider's `jwks_file`), watched for changes.

The control plane reads such a file while it validates the config and sends what it read (the keys, inline)
to Envoy and to the services; nothing downstream reads it again. So a changed file must make the control
plane compile again, or the keys would stay as they were when the config last changed. The files are polled
(`interval`): a stat per file, and a read only when the stat changed, so the set to watch can follow the
config without any bookkeeping, and a file replaced by rename or by a Kubernetes secret's symlink swap is seen
like an edit. An inotify watch on each file's directory wakes the poll at once (a key change reaches Envoy in
tens of milliseconds, not after up to `interval`); the timed poll stays for filesystems without inotify.
A content that differs from what the served config read is read again after `settle` (an editor writing in
place) and reported once: `changed(label)` with a label naming the contents, which the control
plane adds to the revision so `xgate status` tells the two revisions apart. A content whose compile failed
is not reported again until it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from asyncinotify import Inotify, Mask

log = logging.getLogger("xgate.sources.watched")
# A file written and closed, moved or created in the directory (a save by rename, a symlink swap), or removed.
_EVENTS = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM

Stat = tuple[int, int, int, int] | None  # device, inode, size, mtime (ns); None: missing or unreadable


class WatchedFiles:
    """Polls `served()` (path -> digest of what the served config read, see plugins.jwt.file_digest)."""

    def __init__(
        self,
        served: Callable[[], Mapping[str, str]],
        changed: Callable[[str], Awaitable[None]],
        *,
        interval: float = 0.2,
        settle: float = 0.05,
    ) -> None:
        self._served = served
        self._changed = changed
        self._interval = interval
        self._settle = settle
        self._stats: dict[str, Stat] = {}
        self._contents: dict[str, str | None] = {}  # path -> digest of its content now (None: cannot read)
        self._reported: dict[str, str | None] | None = None
        self._directories: set[str] = set()  # watched with inotify

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set: every `interval`, and at once when a watched directory changes."""
        woken = asyncio.Event()
        with Inotify() as inotify:
            listening = asyncio.create_task(self._listen(inotify, woken))
            try:
                while not stop.is_set():
                    self._watch_directories(inotify)
                    waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(woken.wait())}
                    _, pending = await asyncio.wait(waits, timeout=self._interval, return_when=FIRST_COMPLETED)
                    for waiting in pending:
                        waiting.cancel()
                    woken.clear()
                    if not stop.is_set():
                        await self.poll()
            finally:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening

    async def _listen(self, inotify: Inotify, woken: asyncio.Event) -> None:
        async for _ in inotify:
            woken.set()

    def _watch_directories(self, inotify: Inotify) -> None:
        """Watch the directory of each file served now (its parent: a rename or symlink swap replaces it)."""
        for directory in {os.path.dirname(os.path.abspath(path)) for path in self._served()} - self._directories:
            try:
                inotify.add_watch(Path(directory), _EVENTS)
            except OSError:
                continue  # missing now: the timed poll still sees it come back
            self._directories.add(directory)

    async def poll(self) -> None:
        """One look at every file; report once when any differs from what is served."""
        served = dict(self._served())
        if not served or not self._looked(served):
            return
        await asyncio.sleep(self._settle)
        if not self._looked(served, again=True):
            return  # it went back meanwhile
        contents = {path: self._contents.get(path) for path in served}
        if contents == self._reported:
            return  # this content was reported already (and its compile failed, or is under way)
        self._reported = contents
        label = hashlib.sha256(repr(sorted(contents.items())).encode()).hexdigest()[:8]
        changed = sorted(path for path in served if contents[path] != served[path])
        log.info("%s changed; compiling the config again", ", ".join(changed))
        await self._changed(label)

    def _looked(self, served: Mapping[str, str], again: bool = False) -> bool:
        """Whether any file's content differs from what is served (read anew when its stat changed)."""
        for path in served:
            stat = _stat(path)
            if again or stat != self._stats.get(path) or path not in self._contents:
                self._stats[path] = stat
                self._contents[path] = _digest(path)
        for gone in set(self._stats) - set(served):
            del self._stats[gone]
            self._contents.pop(gone, None)
        return any(self._contents[path] != digest for path, digest in served.items())


def _stat(path: str) -> Stat:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


def _digest(path: str) -> str | None:
    # The same digest as plugins.jwt.file_digest (sources may not import plugins): sha256, 16 hex digits.
    try:
        with open(path, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()[:16]
    except OSError:
        return None
