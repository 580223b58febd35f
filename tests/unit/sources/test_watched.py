"""Files the served config reads (a jwks_file), watched: a changed content is reported once, after it
settled; what the served config holds, or a content already reported, is not reported again."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from xgate.sources.watched import WatchedFiles


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


async def test_a_changed_file_is_reported_once_until_it_changes_again(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(b"one")
    served = {str(path): digest(b"one")}
    labels: list[str] = []

    async def changed(label: str) -> None:
        labels.append(label)

    watch = WatchedFiles(lambda: served, changed, settle=0)
    await watch.poll()
    assert labels == []  # as served
    path.write_bytes(b"two")
    await watch.poll()
    await watch.poll()
    assert len(labels) == 1  # reported once, e.g. while its compile fails
    served[str(path)] = digest(b"two")  # the compile took it
    await watch.poll()
    assert len(labels) == 1
    temporary = tmp_path / "new"
    temporary.write_bytes(b"three")
    os.replace(temporary, path)  # a save by rename (a new inode)
    await watch.poll()
    assert len(labels) == 2 and labels[0] != labels[1]
    path.unlink()
    await watch.poll()
    assert len(labels) == 3  # gone: the compile says so (and keeps the last good config)


async def test_a_write_seen_half_way_is_read_again_after_it_settled(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(b"good")
    labels: list[str] = []

    async def changed(label: str) -> None:
        labels.append(label)

    watch = WatchedFiles(lambda: {str(path): digest(b"good")}, changed, settle=0.2)
    path.write_bytes(b"half")
    polled = asyncio.create_task(watch.poll())
    await asyncio.sleep(0.05)
    path.write_bytes(b"good")  # back to what is served before the settle time ended
    await polled
    assert labels == []


async def test_run_polls_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(b"a")
    seen = asyncio.Event()

    async def changed(label: str) -> None:
        seen.set()

    stop = asyncio.Event()
    running = asyncio.create_task(WatchedFiles(lambda: {str(path): digest(b"b")}, changed, interval=0.01).run(stop))
    await asyncio.wait_for(seen.wait(), 5)
    stop.set()
    await asyncio.wait_for(running, 5)


async def test_a_change_wakes_the_poll_before_its_interval(tmp_path: Path) -> None:
    """inotify on the file's directory: a save by rename is reported at once, not after `interval` (here a
    minute)."""
    path = tmp_path / "keys" / "jwks.json"
    path.parent.mkdir()
    path.write_bytes(b"one")
    served = {str(path): digest(b"one")}
    labels: asyncio.Queue[str] = asyncio.Queue()

    async def changed(label: str) -> None:
        served[str(path)] = digest(path.read_bytes())  # as the compile would take it
        await labels.put(label)

    stop = asyncio.Event()
    running = asyncio.create_task(WatchedFiles(lambda: served, changed, interval=60, settle=0).run(stop))
    await asyncio.sleep(0.1)  # the watch is in place
    for content in (b"two", b"three"):
        temporary = tmp_path / "keys" / "new"
        temporary.write_bytes(content)
        os.replace(temporary, path)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(labels.get(), 5)
        assert asyncio.get_running_loop().time() - started < 1
    stop.set()
    await asyncio.wait_for(running, 5)
