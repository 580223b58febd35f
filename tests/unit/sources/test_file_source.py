"""The file source on a real directory: atomic saves, in-place writes, no-op saves, half-written files."""

from __future__ import annotations

import asyncio
from pathlib import Path

from xgate.sources.file import FileSource
from xgate.sources.revision import Revision
from xgate.testing import write_atomic

GOOD = "listeners: [{name: l, port: 1}]\n"


async def _collect(path: Path) -> tuple[FileSource, list[Revision], asyncio.Event, asyncio.Task[None]]:
    seen: list[Revision] = []

    async def emit(revision: Revision) -> None:
        seen.append(revision)

    source = FileSource(path, emit)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    await _until(lambda: len(seen) == 1)
    await asyncio.sleep(0.1)  # let the watcher start before changing the file
    return source, seen, stop, task


async def _until(check: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_atomic_and_in_place_saves_each_emit_one_revision(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    _, seen, stop, task = await _collect(path)
    write_atomic(path, GOOD.replace("port: 1", "port: 2"))
    await _until(lambda: len(seen) == 2)
    path.write_text(GOOD.replace("port: 1", "port: 3"))
    await _until(lambda: len(seen) == 3)
    write_atomic(path, GOOD.replace("port: 1", "port: 3"))  # same content again: nothing new
    await asyncio.sleep(0.3)
    stop.set()
    await task
    assert [r.config.listeners[0].port for r in seen if r.config] == [1, 2, 3]
    assert len({r.revision for r in seen}) == 3


async def test_broken_file_is_reported_once_it_stays_broken(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    _, seen, stop, task = await _collect(path)
    path.write_text("listeners: [\n")
    await _until(lambda: len(seen) == 2)
    stop.set()
    await task
    assert seen[1].error is not None
    assert "not valid YAML" in str(seen[1].error)


async def test_other_files_in_the_directory_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    _, seen, stop, task = await _collect(path)
    (tmp_path / "other.yaml").write_text("whatever")
    await asyncio.sleep(0.3)
    stop.set()
    await task
    assert len(seen) == 1
