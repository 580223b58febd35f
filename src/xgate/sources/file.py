"""The file source: watch one YAML file, or a directory of them (editors that save by rename included), and the
certificate and key files its secrets name, and emit each new revision."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from asyncinotify import Inotify, Mask

from xgate.config.load import ConfigSet, ObjectCache, config_files, is_config_name, parse_document, parse_files
from xgate.config.secrets import SecretFiles
from xgate.errors import ConfigError, ConfigIssue
from xgate.heap import gc_paused
from xgate.sources.revision import Revision, revision_of

log = logging.getLogger("xgate.sources.file")

# Events that mean "a file in the directory is complete": IN_CLOSE_WRITE after an in-place save (never
# mid-write, unlike IN_MODIFY), IN_MOVED_TO after a save by rename, IN_CREATE for a symlink swap.
_EVENTS = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.CREATE
# In a config directory a file can also go away, and its objects with it.
_GONE = Mask.DELETE | Mask.MOVED_FROM
# Above this size, parsing runs in a worker thread so the event loop keeps serving ADS meanwhile.
_THREAD_ABOVE = 256 * 1024


class FileSource:
    """Emit a Revision for the file's content at start and on every change of content.

    A save seen half-written (an editor writing in place) fails to parse; the file is read again after
    `settle` seconds and the error is only reported when the content stayed the same.

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
        self._last_text: str | None = None
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
        if self._last_text is None:
            await self.load()
        stop = stop or asyncio.Event()
        with Inotify() as inotify:
            watched, mask = (self.path, _EVENTS | _GONE) if self._directory else (self.path.parent, _EVENTS)
            inotify.add_watch(watched, mask)
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
                    if event.mask & _GONE and event.name is not None and is_config_name(event.name.name):
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

    def _read_text(self) -> str:
        """The file's text; a directory's is its config files' names and texts as one JSON string, so that
        `_read` compares, digests and re-reads a directory as it does one file. The secrets' files follow
        (see _split), so a rotated certificate is a changed content too."""
        if not self._directory:
            text = self.path.read_text(encoding="utf-8")
        else:
            text = json.dumps([[file.name, _text_of(file)] for file in config_files(self.path)])
        self._secret_read = {}
        if not self._secret_paths:
            return text
        parts = []
        for path in self._secret_paths:
            try:
                data = self._secret_read[path] = path.read_bytes()
                parts.append(f"{path}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}")
            except OSError as exc:
                parts.append(f"{path}\0unreadable\0{exc.errno}")
        return text + _FILES_MARK + "\n".join(parts)

    async def _read(self) -> Revision | None:
        """Read and parse; None when the content did not change since the last revision."""
        while True:
            seen_at = time.perf_counter()
            try:
                text = self._read_text()
            except FileNotFoundError:
                return None  # mid-rename; the new file's event follows
            except (OSError, UnicodeDecodeError) as exc:
                issue = ConfigIssue(str(self.path), "document", "", f"cannot read: {exc}")
                return Revision(revision="", config=None, error=ConfigError([issue]))
            if text == self._last_text:
                return None
            config: ConfigSet | None = None
            error: ConfigError | None = None
            try:
                if len(text) > _THREAD_ABOVE:
                    config = await asyncio.to_thread(self._parse, text)
                else:
                    config = self._parse(text)
            except ConfigError as exc:
                error = exc
            if error is not None or (config is not None and config.issues):
                await asyncio.sleep(self._settle)
                try:
                    again = self._read_text()
                except OSError:
                    again = None
                if again is not None and again != text:
                    continue
            named = sorted(self._secret_files.read)
            if named != self._secret_paths:
                # The secrets name other files than the compared text holds: read again with them in it.
                self._secret_paths = named
                continue
            self._last_text = text
            config_text, files = _split(text)
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
