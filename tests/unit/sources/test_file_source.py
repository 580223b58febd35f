"""The file source on a real directory: atomic saves, in-place writes, no-op saves, half-written, empty, deleted
and undecodable files."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from xgate.config import load
from xgate.config.load import ConfigSet, ObjectCache, parse_document
from xgate.errors import ConfigError
from xgate.sources import file as file_source
from xgate.sources.file import FileSource
from xgate.sources.revision import Revision, revision_of
from xgate.testing import write_atomic
from xgate.testing.tls import TestCA

GOOD = "listeners: [{name: l, port: 1}]\n"


async def _collect(
    path: Path, settle: float = 0.05
) -> tuple[FileSource, list[Revision], asyncio.Event, asyncio.Task[None]]:
    seen: list[Revision] = []

    async def emit(revision: Revision) -> None:
        seen.append(revision)

    source = FileSource(path, emit, settle=settle)
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


async def test_an_empty_read_is_not_emitted_when_content_follows_within_the_settle_time(tmp_path: Path) -> None:
    """`rm f; (sleep 0.3; cat good) > f` or a shell's `>`: the file is empty until the first write lands."""
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    _, seen, stop, task = await _collect(path, settle=1.0)
    path.unlink()
    path.write_text("")  # created empty, closed: the event is there, the content is not
    await asyncio.sleep(0.1)
    path.write_text(GOOD.replace("port: 1", "port: 2"))
    await _until(lambda: len(seen) >= 2)
    await asyncio.sleep(0.3)
    stop.set()
    await task
    assert [r.config.listeners[0].port if r.config and r.config.listeners else None for r in seen] == [1, 2], seen


async def test_an_empty_file_that_stays_empty_is_emitted_after_the_settle_time(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    _, seen, stop, task = await _collect(path, settle=0.3)
    loop = asyncio.get_running_loop()
    written = loop.time()
    path.write_text("  \n")
    await _until(lambda: len(seen) == 2)
    emitted = loop.time()
    stop.set()
    await task
    assert emitted - written >= 0.3  # read again after the settle time first
    assert seen[1].error is None and seen[1].config is not None and not seen[1].config.listeners
    assert seen[1].revision == revision_of("  \n")


async def test_a_deleted_file_is_reported_once_and_its_return_is_emitted_even_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    _, seen, stop, task = await _collect(path)
    path.unlink()
    await _until(lambda: len(seen) == 2)
    assert seen[1].config is None and seen[1].error is not None and seen[1].revision == "missing"
    assert f"{path}: document: no such file" in str(seen[1].error)
    (tmp_path / "other.yaml").write_text("x")  # more events while it is gone: no second report
    await asyncio.sleep(0.3)
    assert len(seen) == 2
    path.write_text(GOOD)  # the same content as before: the control plane must hear it is back
    await _until(lambda: len(seen) == 3)
    stop.set()
    await task
    assert seen[2].error is None and seen[2].revision == revision_of(GOOD)


async def test_an_undecodable_save_is_reported_with_a_revision_and_good_content_clears_it(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    _, seen, stop, task = await _collect(path)
    binary = b"\x7fELF\x02\x01\x01\x00\xff\xfe"
    path.write_bytes(binary)
    await _until(lambda: len(seen) == 2)
    assert seen[1].config is None and seen[1].revision == revision_of(binary)
    assert "not UTF-8 text (byte 8)" in str(seen[1].error)
    path.write_text(GOOD)
    await _until(lambda: len(seen) == 3)
    stop.set()
    await task
    assert seen[2].error is None and seen[2].revision == revision_of(GOOD)


async def test_saves_of_a_big_file_are_spliced_and_equal_a_whole_read_and_a_broken_save_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above 256 KB a save of a few items is spliced into the last good revision on the event loop
    (parse_change); each revision must be what a fresh whole read of the same text gives, a broken save must be
    reported and leave that last good revision to splice the next save into."""
    spliced: list[bool] = []

    def counting(text: str, source: str, cache: ObjectCache, most: int | None = None) -> ConfigSet | None:
        config = load.parse_change(text, source, cache, most)
        spliced.append(config is not None)
        return config

    monkeypatch.setattr(file_source, "parse_change", counting)
    head = "listeners: [{name: l, port: 1}]\nupstreams:\n  - {name: a, endpoints: ['127.0.0.1:1']}\nroutes:\n"
    routes = [f"  - {{name: r{n}, match: {{path: {{prefix: /route-{n}/}}}}, upstream: a}}\n" for n in range(5000)]
    path = tmp_path / "gw.yaml"
    path.write_text(head + "".join(routes))
    assert path.stat().st_size > 256 * 1024
    _, seen, stop, task = await _collect(path)
    texts = []
    edits: list[tuple[int, str, bool]] = [  # (where, the item's text, inserted or replacing)
        (10, routes[10].replace("/route-10/", "/changed/"), False),
        (20, "  - {name: r20, match: {path: {prefix: /unterminated\n", False),  # YAML refuses it
        (20, routes[21].replace("r21", "r20"), False),  # good again
        (30, "  - {name: new, upstream: a}\n", True),
        (40, "    - {name: r40, upstream: a}\n", False),  # another indentation: read whole
    ]
    for where, item, inserted in edits:
        if inserted:
            routes.insert(where, item)
        else:
            routes[where] = item
        texts.append(head + "".join(routes))
        write_atomic(path, texts[-1])
        await _until(lambda: len(seen) == len(texts) + 1)
    stop.set()
    await task
    for text, revision in zip(texts, seen[1:], strict=True):
        if "unterminated" in text:
            assert revision.config is None and "not valid YAML" in str(revision.error)
            continue
        whole: ConfigSet | None = None
        with contextlib.suppress(ConfigError):
            whole = parse_document(text, str(path))
        assert revision.config == whole
    # The first read and the broken save are read whole (the latter refused), and so is the re-indented item.
    assert spliced == [False, True, False, True, True, False]


async def test_a_spliced_save_of_a_big_file_keeps_its_secrets_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save of a big file (above 256 KB, see above) whose secrets name files is spliced too: the revision
    still holds the secret with the files' content, and the revision's name still covers the files."""
    spliced_saves: list[bool] = []

    def counting(text: str, source: str, cache: ObjectCache, most: int | None = None) -> ConfigSet | None:
        config = load.parse_change(text, source, cache, most)
        spliced_saves.append(config is not None)
        return config

    monkeypatch.setattr(file_source, "parse_change", counting)
    issued = TestCA().issue("a.example.test")
    issued.write(tmp_path, "a")
    head = (
        "secrets:\n  - {name: a, cert_file: a.pem, key_file: a-key.pem}\n"
        "listeners: [{name: l, port: 1, tls: {certificates: [{secret: a}]}}]\n"
        "upstreams:\n  - {name: u, endpoints: ['127.0.0.1:1']}\nroutes:\n"
    )
    routes = [f"  - {{name: r{n}, match: {{path: {{prefix: /route-{n}/}}}}, upstream: u}}\n" for n in range(5000)]
    path = tmp_path / "gw.yaml"
    path.write_text(head + "".join(routes))
    _, seen, stop, task = await _collect(path)
    routes[10] = routes[10].replace("/route-10/", "/changed/")
    write_atomic(path, head + "".join(routes))
    await _until(lambda: len(seen) == 2)
    stop.set()
    await task
    first, spliced = seen
    assert spliced.error is None and spliced.config is not None, spliced.error
    assert spliced.config.routes[10].match.path.prefix == "/changed/"
    (secret,) = spliced.config.secrets
    assert secret.cert == issued.cert
    assert spliced.revision.split(".")[1] == first.revision.split(".")[1]  # the same files, named the same
    assert spliced_saves[-1], spliced_saves  # the save was spliced, not read whole
