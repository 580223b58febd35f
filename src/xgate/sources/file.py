"""The file source: watch one YAML file (editors that save by rename included) and emit each new revision."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from asyncinotify import Inotify, Mask

from xgate.config.load import ConfigSet, ObjectCache, parse_document
from xgate.errors import ConfigError, ConfigIssue
from xgate.pipeline import gc_paused, revision_of
from xgate.sources.revision import Revision

log = logging.getLogger("xgate.sources.file")

# Events that mean "a file in the directory is complete": IN_CLOSE_WRITE after an in-place save (never
# mid-write, unlike IN_MODIFY), IN_MOVED_TO after a save by rename, IN_CREATE for a symlink swap; and
# IN_DELETE / IN_MOVED_FROM: the file may be gone, which is reported.
_EVENTS = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM
# Above this size, parsing runs in a worker thread so the event loop keeps serving ADS meanwhile.
_THREAD_ABOVE = 256 * 1024


@dataclass(frozen=True)
class _Unreadable:
    """A read that gave no text: the file is missing, unreadable, or not UTF-8."""

    revision: str
    message: str


_NOTHING = object()  # nothing read yet


class FileSource:
    """Emit a Revision for the file's content at start and on every change of content.

    A save seen half-written (an editor writing in place) fails to parse, or reads empty (`rm f; cat > f`,
    a shell's `>` before the first write); a file being replaced may be missing for a moment. Each of those
    is read again after `settle` seconds and only emitted when it stayed the same: an empty content as
    a revision (the control plane's guard holds it back), a missing or unreadable file as an error.
    """

    def __init__(
        self,
        path: str | Path,
        emit: Callable[[Revision], Awaitable[None]],
        *,
        settle: float = 0.05,
    ) -> None:
        self.path = Path(path).absolute()
        self._emit = emit
        self._settle = settle
        self._last: object = _NOTHING  # the text (or _Unreadable) of the last revision emitted
        self._cache = ObjectCache()

    async def load(self) -> Revision:
        revision = await self._read()
        if revision is not None:
            await self._emit(revision)
            return revision
        return Revision(revision="", config=None, error=None)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Load (unless already loaded), then follow changes until `stop` is set or the task is cancelled.

        The directory is watched, not the file: a save by rename replaces the file's inode, and a
        Kubernetes ConfigMap swaps a symlinked directory. Any finished write, rename or creation in the
        directory makes us read the file again; an unchanged content is ignored.
        """
        if self._last is _NOTHING:
            await self.load()
        stop = stop or asyncio.Event()
        with Inotify() as inotify:
            inotify.add_watch(self.path.parent, _EVENTS)
            events = inotify.__aiter__()
            stopping = asyncio.create_task(stop.wait())
            try:
                while not stop.is_set():
                    waiting = asyncio.create_task(events.__anext__())
                    done, _ = await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if waiting not in done:
                        waiting.cancel()
                        break
                    waiting.result()
                    revision = await self._read()
                    if revision is not None:
                        await self._emit(revision)
            finally:
                stopping.cancel()

    def _parse(self, text: str) -> ConfigSet:
        with gc_paused():
            return parse_document(text, str(self.path), self._cache)

    def _content(self) -> str | _Unreadable:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return _Unreadable("missing", "no such file (deleted or renamed away?); the last good config keeps serving")
        except OSError as exc:
            return _Unreadable("unreadable", f"cannot read: {exc.strerror or exc}")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _Unreadable(revision_of(data), f"not UTF-8 text (byte {exc.start}): {exc.reason}")

    async def _read(self) -> Revision | None:
        """Read and parse; None when the content (or the problem) did not change since the last revision."""
        while True:
            seen_at = time.perf_counter()
            content = self._content()
            if content == self._last:
                return None
            config: ConfigSet | None = None
            error: ConfigError | None = None
            if isinstance(content, _Unreadable):
                error = ConfigError([ConfigIssue(str(self.path), "document", "", content.message)])
            else:
                try:
                    if len(content) > _THREAD_ABOVE:
                        config = await asyncio.to_thread(self._parse, content)
                    else:
                        config = self._parse(content)
                except ConfigError as exc:
                    error = exc
            empty = isinstance(content, str) and not content.strip()
            transient = error is not None or (config is not None and bool(config.issues)) or empty
            if transient:
                await asyncio.sleep(self._settle)
                if self._content() != content:
                    continue
            self._last = content
            if isinstance(content, _Unreadable):
                return Revision(revision=content.revision, config=None, error=error, seen_at=seen_at)
            return Revision(revision=revision_of(content), config=config, error=error, seen_at=seen_at)
