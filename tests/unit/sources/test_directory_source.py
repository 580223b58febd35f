"""The file source on a config directory: a change to any of its config files is a revision of the whole, with
the settle rules of one file; other files are ignored, and a file deleted and written again is not a removal."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from xgate.sources.file import FileSource
from xgate.sources.revision import Revision
from xgate.testing import write_atomic

LISTENERS = "listeners: [{name: l, port: 1}]\n"
ROUTES = "routes: [{name: r, direct_response: {status: 200, body: one}}]\n"


async def _until(check: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


class Follow:
    """A FileSource on `path`, running, with every revision it emitted."""

    def __init__(self, path: Path, settle: float = 0.05) -> None:
        self.seen: list[Revision] = []
        self.stop = asyncio.Event()

        async def emit(revision: Revision) -> None:
            self.seen.append(revision)

        self.source = FileSource(path, emit, settle=settle)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Follow:
        self.task = asyncio.create_task(self.source.run(self.stop))
        await _until(lambda: len(self.seen) == 1)
        await asyncio.sleep(0.1)  # let the watcher start before changing files
        return self

    async def __aexit__(self, *_: object) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task

    def bodies(self, revision: Revision) -> list[str]:
        assert revision.config is not None, revision.error
        return [route.direct_response.body for route in revision.config.routes if route.direct_response]

    async def next(self, count: int) -> Revision:
        await _until(lambda: len(self.seen) >= count)
        return self.seen[count - 1]


async def test_every_config_file_of_the_directory_is_followed(tmp_path: Path) -> None:
    (tmp_path / "listeners.yaml").write_text(LISTENERS)
    (tmp_path / "routes.yaml").write_text(ROUTES)
    async with Follow(tmp_path) as follow:
        first = follow.seen[0]
        assert first.config is not None and [item.name for item in first.config.listeners] == ["l"]
        assert follow.bodies(first) == ["one"]

        write_atomic(tmp_path / "routes.yaml", ROUTES.replace("one", "two"))  # a save by rename
        assert follow.bodies(await follow.next(2)) == ["two"]
        (tmp_path / "routes.yaml").write_text(ROUTES.replace("one", "three"))  # a save in place
        assert follow.bodies(await follow.next(3)) == ["three"]
        (tmp_path / "more.yml").write_text("routes: [{name: s, direct_response: {status: 200, body: more}}]\n")
        assert sorted(follow.bodies(await follow.next(4))) == ["more", "three"]
        (tmp_path / "more.yml").unlink()  # a file removed: its objects go, once it stayed away
        assert follow.bodies(await follow.next(5)) == ["three"]

        # Not config: other suffixes, hidden files (editors' swap files, a ConfigMap's ..data), subdirectories.
        (tmp_path / "notes.txt").write_text("routes: []\n")
        (tmp_path / ".routes.yaml.swp").write_text("routes: []\n")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "x.yaml").write_text("routes: []\n")
        await asyncio.sleep(0.3)
        assert len(follow.seen) == 5


async def test_a_file_deleted_and_written_again_is_not_a_removal(tmp_path: Path) -> None:
    (tmp_path / "listeners.yaml").write_text(LISTENERS)
    (tmp_path / "routes.yaml").write_text(ROUTES)
    # A generous settle, so that the gap below stays inside it even on a busy machine.
    async with Follow(tmp_path, settle=1.0) as follow:
        # Some tools save by deleting the file and writing a new one a moment later.
        os.remove(tmp_path / "routes.yaml")
        await asyncio.sleep(0.05)
        (tmp_path / "routes.yaml").write_text(ROUTES.replace("one", "two"))
        assert follow.bodies(await follow.next(2)) == ["two"]
        await asyncio.sleep(0.3)
    assert [follow.bodies(revision) for revision in follow.seen] == [["one"], ["two"]]


async def test_a_broken_file_is_reported_with_its_path_once_it_stays_broken(tmp_path: Path) -> None:
    (tmp_path / "listeners.yaml").write_text(LISTENERS)
    (tmp_path / "routes.yaml").write_text(ROUTES)
    async with Follow(tmp_path) as follow:
        (tmp_path / "routes.yaml").write_text("routes: [\n")
        broken = await follow.next(2)
        assert broken.error is not None and f"{tmp_path / 'routes.yaml'}:" in str(broken.error)
        assert "not valid YAML" in str(broken.error)
        (tmp_path / "routes.yaml").write_bytes(b"routes: [\xff]\n")
        undecodable = await follow.next(3)
        assert undecodable.error is not None
        assert "routes.yaml is not UTF-8 text" in str(undecodable.error), undecodable.error
        write_atomic(tmp_path / "routes.yaml", ROUTES)
        assert follow.bodies(await follow.next(4)) == ["one"]


async def test_an_empty_directory_is_an_error_not_an_empty_config(tmp_path: Path) -> None:
    async with Follow(tmp_path) as follow:
        assert follow.seen[0].error is not None
        assert "no *.yaml, *.yml or *.json file in this directory" in str(follow.seen[0].error)
        (tmp_path / "gw.json").write_text('{"listeners": [{"name": "l", "port": 1}]}')
        later = await follow.next(2)
        assert later.config is not None and [item.name for item in later.config.listeners] == ["l"]
