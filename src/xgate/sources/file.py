"""The file source: watch a YAML file or a directory of them (editors that save by rename included), and the
certificate and key files its secrets name, and emit each new revision."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from asyncinotify import Inotify, Mask

from xgate.config.directory import config_files, is_config_name, parse_files
from xgate.config.load import ConfigSet, ObjectCache, parse_change, parse_document
from xgate.config.secrets import SecretFiles
from xgate.errors import ConfigError, ConfigIssue
from xgate.heap import gc_paused
from xgate.sources.revision import Revision, revision_of

log = logging.getLogger("xgate.sources.file")

# Events that mean "a file in the directory is complete": IN_CLOSE_WRITE after an in-place save (never
# mid-write, unlike IN_MODIFY), IN_MOVED_TO after a save by rename, IN_CREATE for a symlink swap; and
# IN_DELETE / IN_MOVED_FROM: the file may be gone, which is reported.
_EVENTS = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM
# In a config directory such a file takes its objects with it (after the settle time: see FileSource).
_GONE = Mask.DELETE | Mask.MOVED_FROM
# Above this size, parsing runs in a worker thread so the event loop keeps serving ADS meanwhile, unless the save
# changed at most _INLINE_ITEMS list items of a file read before (parse_change: ~1 ms at 10,000 routes, where
# the hop to a thread and back costs about as much).
_THREAD_ABOVE = 256 * 1024
_INLINE_ITEMS = 64


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

    `path` may be a directory: its config files (see config_files) are one config, as for `xgate validate`,
    and a change to any of them is a change, under the same settle rule. A file removed from it counts
    after `settle` seconds (a save that deletes and writes the file again is not a removal).

    The files that secrets name (certificates, keys, CA bundles) are part of the content: their directories
    are watched too, a rotated certificate is a new revision (`<config digest>.<files digest>`), and a
    rotation seen half-done (a new certificate, the old key) is read again after `settle` like a half-written
    config, then refused if it stays so (the last good certificate keeps serving).
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
        self._directory = self.path.is_dir()
        self._caches: dict[str, ObjectCache] = {}  # a directory's: one per file
        self._secret_files = SecretFiles(reader=self._secret_bytes)
        self._secret_paths: list[Path] = []  # the files the last parse's secrets named, in the compared text
        self._secret_read: dict[Path, bytes] = {}  # their bytes as read for this revision's text
        self._watched: set[Path] = set()

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
            watched = self.path if self._directory else self.path.parent
            inotify.add_watch(watched, _EVENTS)
            self._watched.add(watched)
            self._watch_secret_files(inotify)
            events = inotify.__aiter__()
            stopping = asyncio.create_task(stop.wait())
            try:
                while not stop.is_set():
                    waiting = asyncio.create_task(events.__anext__())
                    done, _ = await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if waiting not in done:
                        waiting.cancel()
                        break
                    event = waiting.result()
                    name = event.name.name if event.name is not None else ""
                    if self._directory and event.mask & _GONE and is_config_name(name):
                        await asyncio.sleep(self._settle)
                    revision = await self._read()
                    self._watch_secret_files(inotify)
                    if revision is not None:
                        await self._emit(revision)
            finally:
                stopping.cancel()

    def _watch_secret_files(self, inotify: Inotify) -> None:
        """Watch the directories of the files secrets name (a rename or a Kubernetes symlink swap there too)."""
        for path in self._secret_paths:
            if path.parent not in self._watched and path.parent.is_dir():
                inotify.add_watch(path.parent, _EVENTS)
                self._watched.add(path.parent)

    def _secret_bytes(self, path: Path) -> bytes:
        """A secret file's bytes: as read for the compared text when it was, so the served content is the one
        the revision's digest covers."""
        if path in self._secret_read:
            return self._secret_read[path]
        return path.read_bytes()

    def _parse(self, text: str) -> ConfigSet:
        config_text, _ = _split(text)
        with gc_paused():
            if self._directory:
                files = [(str(self.path / name), content) for name, content in json.loads(config_text)]
                config = parse_files(str(self.path), files, self._caches)
            else:
                config = parse_document(config_text, str(self.path), self._cache)
            return self._secret_files.resolve(config)

    def _change(self, text: str) -> ConfigSet | None:
        """A save of a few items of the file, read at once (see parse_change); None: parse it."""
        if self._directory:
            return None
        config_text, _ = _split(text)
        with gc_paused():
            config = parse_change(config_text, str(self.path), self._cache, _INLINE_ITEMS)
            return self._secret_files.resolve(config) if config is not None else None

    def _content(self) -> str | _Unreadable:
        """The config's text, then the digests of the secrets' files (see _split), so that a rotated
        certificate is a changed content too."""
        text = self._config_text()
        self._secret_read = {}
        if isinstance(text, _Unreadable) or not self._secret_paths:
            return text
        parts = []
        for path in self._secret_paths:
            try:
                data = self._secret_read[path] = path.read_bytes()
                parts.append(f"{path}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}")
            except OSError as exc:
                parts.append(f"{path}\0unreadable\0{exc.errno}")
        return text + _FILES_MARK + "\n".join(parts)

    def _config_text(self) -> str | _Unreadable:
        """The file's text; a directory's is its config files' names and texts as one JSON string, so that
        `_read` compares, digests and re-reads a directory as it does one file."""
        if self._directory:
            try:
                return json.dumps([[file.name, _text_of(file)] for file in config_files(self.path)])
            except FileNotFoundError:
                return _Unreadable("missing", "the directory is gone; the last good config keeps serving")
            except OSError as exc:
                return _Unreadable("unreadable", f"cannot read: {exc.strerror or exc}")
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
                    if len(content) <= _THREAD_ABOVE:
                        config = self._parse(content)
                    elif (config := self._change(content)) is None:
                        config = await asyncio.to_thread(self._parse, content)
                except ConfigError as exc:
                    error = exc
            empty = isinstance(content, str) and not content.strip()
            transient = error is not None or (config is not None and bool(config.issues)) or empty
            if transient:
                await asyncio.sleep(self._settle)
                if self._content() != content:
                    continue
            if isinstance(content, _Unreadable):
                self._last = content
                return Revision(revision=content.revision, config=None, error=error, seen_at=seen_at)
            named = sorted(self._secret_files.read)
            if named != self._secret_paths:
                # The secrets name other files than the compared content holds: read again with them in it.
                self._secret_paths = named
                continue
            self._last = content
            config_text, files = _split(content)
            revision = revision_of(config_text) + (f".{revision_of(files)[:8]}" if files else "")
            return Revision(revision=revision, config=config, error=error, seen_at=seen_at)


# Separates the config's text from the digests of the secrets' files in the compared content (a NUL never
# occurs in a config: it is not valid YAML).
_FILES_MARK = "\0xgate-secret-files\0"


def _split(text: str) -> tuple[str, str]:
    """(the config's text, the secrets' files part: "" when there are none)."""
    config_text, _, files = text.partition(_FILES_MARK)
    return config_text, files


def _text_of(file: Path) -> str:
    """One file of a directory; the error says which file cannot be decoded."""
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OSError(f"{file.name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
