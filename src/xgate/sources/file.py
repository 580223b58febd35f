"""The file source: watch one YAML file (editors that save by rename included) and emit each new revision."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from xgate.config.load import ConfigSet, parse_document
from xgate.errors import ConfigError, ConfigIssue
from xgate.pipeline import revision_of

log = logging.getLogger("xgate.sources.file")


@dataclass(frozen=True)
class Revision:
    """What a source produced: a parsed config, or the error that stopped it, with the revision id."""

    revision: str
    config: ConfigSet | None
    error: ConfigError | None = None


class FileSource:
    """Emit a Revision for the file's content at start and on every change of content.

    A save seen half-written (an editor writing in place) fails to parse; the file is read again after
    `settle` seconds and the error is only reported when the content stayed the same.
    """

    def __init__(
        self,
        path: str | Path,
        emit: Callable[[Revision], Awaitable[None]],
        *,
        step_ms: int = 2,
        settle: float = 0.05,
    ) -> None:
        self.path = Path(path).absolute()
        self._emit = emit
        self._step_ms = step_ms
        self._settle = settle
        self._last_text: str | None = None

    async def load(self) -> Revision:
        revision = await self._read()
        if revision is not None:
            await self._emit(revision)
            return revision
        return Revision(revision="", config=None, error=None)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Load (unless already loaded), then follow changes until `stop` is set or the task is cancelled."""
        if self._last_text is None:
            await self.load()
        directory = self.path.parent
        async for changes in watchfiles.awatch(
            directory,
            watch_filter=lambda _change, changed: Path(changed).absolute() == self.path,
            debounce=200,
            step=self._step_ms,
            stop_event=stop,
            recursive=False,
        ):
            del changes
            revision = await self._read()
            if revision is not None:
                await self._emit(revision)

    async def _read(self) -> Revision | None:
        """Read and parse; None when the content did not change since the last revision."""
        while True:
            try:
                text = self.path.read_text(encoding="utf-8")
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
                config = parse_document(text, str(self.path))
            except ConfigError as exc:
                error = exc
            if error is not None or (config is not None and config.issues):
                await asyncio.sleep(self._settle)
                try:
                    again = self.path.read_text(encoding="utf-8")
                except OSError:
                    again = None
                if again is not None and again != text:
                    continue
            self._last_text = text
            return Revision(revision=revision_of(text), config=config, error=error)
