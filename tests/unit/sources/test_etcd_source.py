"""The etcd source against an in-memory etcd: resume, compaction, outages, bad values, deletes, route changes.

Each test drives the store and waits for the revision the source emits (or for its health to change), so
nothing depends on timing; the source retries every few milliseconds here instead of 0.1-2 s.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from tests.unit.sources.fake_etcd import FakeEtcd

from xgate.config.schema import Route
from xgate.sources.etcd.kv import EtcdRequestError
from xgate.sources.etcd.source import EtcdSource
from xgate.sources.revision import Revision

LISTENER = '{"port": 10000}'


def route(body: str, path: str = "/p") -> str:
    return json.dumps({"match": {"path": {"prefix": path}}, "direct_response": {"status": 200, "body": body}})


def key(name: str, kind: str = "route") -> str:
    return f"/xgate/{kind}/{name}"


def served(revision: Revision) -> dict[str, str]:
    """The routes a revision serves: name -> body."""
    assert revision.config is not None
    return {r.name: r.direct_response.body for r in revision.config.routes if r.direct_response is not None}


def in_etcd(etcd: FakeEtcd) -> dict[str, str]:
    """The routes etcd holds: name -> body."""
    stored = etcd.state("/xgate/route/").items()
    return {name.rsplit("/", 1)[1]: json.loads(value)["direct_response"]["body"] for name, value in stored}


def bodies(changes: object) -> dict[str, str | None]:
    """A revision's route changes: name -> new body, None when the route is gone."""
    assert isinstance(changes, dict)
    result: dict[str, str | None] = {}
    for name, new in changes.items():
        assert new is None or isinstance(new, Route)
        result[name] = None if new is None or new.direct_response is None else new.direct_response.body
    return result


@dataclass
class Following:
    source: EtcdSource
    emitted: asyncio.Queue[Revision]

    async def next(self) -> Revision:
        """The next revision the source emits (a test waits at most a second for it)."""
        return await asyncio.wait_for(self.emitted.get(), 1.0)

    async def until(self, check: Callable[[], bool]) -> None:
        """Let the source run until `check()` holds (health and resume points change without an emit)."""
        async with asyncio.timeout(1.0):
            while not check():
                await asyncio.sleep(0.001)


@asynccontextmanager
async def follow(etcd: FakeEtcd) -> AsyncIterator[Following]:
    emitted: asyncio.Queue[Revision] = asyncio.Queue()

    async def emit(revision: Revision) -> None:
        emitted.put_nowait(revision)

    source = EtcdSource(etcd, emit, retry_initial=0.001, retry_max=0.004)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        yield Following(source, emitted)
    finally:
        stop.set()
        await asyncio.wait_for(task, 1.0)
    assert emitted.empty(), f"revisions emitted but not looked at: {emitted.qsize()}"


async def test_resume_after_a_dropped_connection_continues_from_the_last_revision_seen_plus_one() -> None:
    etcd = FakeEtcd()
    etcd.put(key("public", "listener"), LISTENER)
    etcd.put(key("r1"), route("one"))
    read_at = etcd.put(key("r2"), route("two"))
    async with follow(etcd) as following:
        first = await following.next()
        assert (first.revision, served(first)) == (f"etcd-{read_at}", {"r1": "one", "r2": "two"})
        seen = etcd.put(key("r3"), route("three"))
        assert bodies((await following.next()).changes) == {"r3": "three"}

        # Committed but still in flight when the connection drops: the source never sees this response.
        etcd.put(key("r4"), route("four"))
        etcd.outage()
        await following.until(lambda: not following.source.health.connected)
        etcd.delete(key("r1"))
        etcd.put(key("r2"), route("two, again"))
        last = etcd.txn({key("r5"): route("five"), key("r3"): route("three, again")})
        etcd.restore()

        resumed = await following.next()
        assert resumed.revision == f"etcd-{last}"
        # Everything since the last revision seen, each change once, in one revision.
        assert bodies(resumed.changes) == {
            "r1": None, "r2": "two, again", "r3": "three, again", "r4": "four", "r5": "five"
        }  # fmt: skip
        assert served(resumed) == in_etcd(etcd)
        assert etcd.watches[0] == read_at + 1
        assert set(etcd.watches[1:]) == {seen + 1}  # every retry during the outage asked for the same revision
        assert (etcd.reads, following.source.health.full_reads) == (1, 1)  # resumed, not read again

        live = etcd.put(key("r6"), route("six"))
        after = await following.next()
        assert (after.revision, bodies(after.changes)) == (f"etcd-{live}", {"r6": "six"})


async def test_compaction_during_an_outage_reads_everything_again_and_ends_equal_to_etcd() -> None:
    etcd = FakeEtcd()
    etcd.put(key("public", "listener"), LISTENER)
    for name in ("r1", "r2", "r3"):
        etcd.put(key(name), route(name))
    async with follow(etcd) as following:
        await following.next()
        await following.until(lambda: bool(etcd.watches))
        etcd.outage()
        await following.until(lambda: not following.source.health.connected)
        stopped_at = following.source.revision
        etcd.delete(key("r1"))
        etcd.put(key("r2"), route("r2, changed"))
        etcd.put(key("r4"), route("r4"))
        etcd.delete(key("public", "listener"))
        etcd.put(key("private", "listener"), '{"port": 10001}')
        etcd.compact()
        etcd.restore()

        reread = await following.next()
        assert reread.revision == f"etcd-{etcd.revision}"
        assert reread.changes is None  # after a full read anything may have changed
        assert served(reread) == in_etcd(etcd) == {"r2": "r2, changed", "r3": "r3", "r4": "r4"}
        assert reread.config is not None
        assert [listener.name for listener in reread.config.listeners] == ["private"]
        assert following.source.health.full_reads == 2
        assert stopped_at + 1 in etcd.watches  # it tried to resume first, and met the compaction
        # Then it watches from the revision it read at.
        await following.until(lambda: etcd.watches[-1] == etcd.revision + 1)
        etcd.put(key("r5"), route("r5"))
        after = await following.next()
        assert bodies(after.changes) == {"r5": "r5"}
        assert served(after) == in_etcd(etcd)


async def test_an_outage_shows_in_health_once_and_clears_on_reconnect() -> None:
    etcd = FakeEtcd()
    etcd.put(key("r1"), route("one"))
    async with follow(etcd) as following:
        health = following.source.health
        await following.next()
        await following.until(lambda: health.connected and bool(etcd.watches))
        assert (health.outage_since, health.outages) == (None, 0)

        before = time.time()
        etcd.outage()
        await following.until(lambda: not health.connected)
        assert health.outage_since is not None and before <= health.outage_since <= time.time()
        assert health.last_error is not None and "unavailable" in health.last_error
        retries = len(etcd.watches)
        await following.until(lambda: len(etcd.watches) >= retries + 3)
        assert health.outages == 1  # one outage, however many retries fail
        assert health.to_dict()["connected"] is False

        etcd.restore()
        await following.until(lambda: health.connected)
        assert (health.to_dict()["outage_since"], health.outages) == (None, 1)
        assert following.emitted.empty()  # nothing changed meanwhile: nothing to emit

        etcd.fail(EtcdRequestError("etcd refused the request (PERMISSION_DENIED): permission denied"))
        await following.until(lambda: not health.connected)
        assert health.outages == 2
        assert health.last_error is not None and "permission denied" in health.last_error
        etcd.put(key("r1"), route("changed while refused"))
        etcd.restore()
        assert served(await following.next()) == {"r1": "changed while refused"}
        assert health.connected and health.outage_since is None


async def test_a_source_started_during_an_outage_reports_it_and_reads_once_etcd_is_back() -> None:
    etcd = FakeEtcd()
    etcd.put(key("r1"), route("one"))
    etcd.outage()
    async with follow(etcd) as following:
        health = following.source.health
        await following.until(lambda: health.outages == 1)
        assert not health.connected and health.outage_since is not None
        etcd.restore()
        assert served(await following.next()) == {"r1": "one"}
        assert health.connected and health.outage_since is None and health.full_reads == 1


async def test_a_value_that_is_not_json_or_not_valid_is_reported_with_its_key_and_the_last_good_one_serves() -> None:
    etcd = FakeEtcd()
    etcd.put(key("r1"), route("one"))
    async with follow(etcd) as following:
        await following.next()

        etcd.put(key("r1"), "{not json")
        broken = await following.next()
        assert served(broken) == {"r1": "one"}
        assert broken.changes == {}  # no route changed
        [issue] = broken.warnings
        assert issue.source == key("r1") and issue.obj == "route r1"
        assert issue.message.endswith("(serving its last good version)")

        etcd.put(key("r1"), route("one").replace('"status": 200', '"status": 99'))
        invalid = await following.next()
        assert served(invalid) == {"r1": "one"}
        [issue] = invalid.warnings
        assert (issue.source, issue.field) == (key("r1"), "direct_response.status")

        etcd.txn({key("r2"): '"a string"', "/xgate/routes/r3": route("three")})  # routes/: no such kind
        both = await following.next()
        assert served(both) == {"r1": "one"}
        assert {(issue.source, issue.message.rsplit(" (", 1)[-1]) for issue in both.warnings} == {
            (key("r1"), "serving its last good version)"),
            (key("r2"), "not served)"),
            ("/xgate/routes/r3", "not served)"),
        }

        etcd.put(key("r1"), route("one, fixed"))
        fixed = await following.next()
        assert served(fixed) == {"r1": "one, fixed"}
        assert bodies(fixed.changes) == {"r1": "one, fixed"}
        assert {issue.source for issue in fixed.warnings} == {key("r2"), "/xgate/routes/r3"}


async def test_deletes_remove_objects_and_their_problems() -> None:
    etcd = FakeEtcd()
    etcd.put(key("public", "listener"), LISTENER)
    etcd.put(key("users", "upstream"), '{"endpoints": ["127.0.0.1:8080"]}')
    for name in ("r1", "r2", "r3"):
        etcd.put(key(name), route(name))
    etcd.put(key("r3"), "{broken")  # r3 serves its last good version... of which a fresh source has none
    async with follow(etcd) as following:
        first = await following.next()
        assert served(first) == {"r1": "r1", "r2": "r2"}
        assert [issue.source for issue in first.warnings] == [key("r3")]

        etcd.delete(key("r1"))
        gone = await following.next()
        assert (served(gone), bodies(gone.changes)) == ({"r2": "r2"}, {"r1": None})

        etcd.put(key("r2"), "{broken")
        assert served(await following.next()) == {"r2": "r2"}
        etcd.delete(key("r2"))  # deleting a broken key removes its last good version too
        deleted = await following.next()
        assert (served(deleted), bodies(deleted.changes)) == ({}, {"r2": None})
        assert [issue.source for issue in deleted.warnings] == [key("r3")]

        etcd.delete(key("r3"))  # never served: its problem goes, nothing else changes
        quiet = await following.next()
        assert (quiet.warnings, quiet.changes) == ((), {})

        etcd.delete(key("users", "upstream"))
        upstream_gone = await following.next()
        assert upstream_gone.config is not None and upstream_gone.config.upstreams == ()
        assert upstream_gone.changes is None  # not a route: the whole config may have changed


async def test_route_changes_name_exactly_the_routes_that_changed() -> None:
    etcd = FakeEtcd()
    etcd.put(key("public", "listener"), LISTENER)
    for name in ("r1", "r2", "r3"):
        etcd.put(key(name), route(name))
    async with follow(etcd) as following:
        assert (await following.next()).changes is None  # the first read: everything

        etcd.txn({key("r1"): route("r1, changed"), key("r4"): route("r4")}, deletes=[key("r2")])
        one = await following.next()
        assert bodies(one.changes) == {"r1": "r1, changed", "r2": None, "r4": "r4"}
        assert one.changes is not None and one.config is not None
        assert all(one.changes[r.name] is r for r in one.config.routes if r.name in one.changes)

        etcd.put(key("r3"), route("r3, changed"))
        assert bodies((await following.next()).changes) == {"r3": "r3, changed"}  # none carried over

        etcd.txn({key("r1"): route("r1, again"), key("public", "listener"): '{"port": 10001}'})
        assert (await following.next()).changes is None  # a listener changed too
        etcd.put(key("cors", "plugin"), '{"allow_origins": ["*"]}')
        assert (await following.next()).changes is None

        etcd.txn({key("r4"): route("r4, changed"), key("r5"): "{broken"})
        mixed = await following.next()
        assert bodies(mixed.changes) == {"r4": "r4, changed"}  # the broken one is a warning, not a change
        assert [issue.source for issue in mixed.warnings] == [key("r5")]


async def test_a_progress_notification_moves_the_resume_point_without_emitting() -> None:
    etcd = FakeEtcd()
    etcd.put(key("r1"), route("one"))
    async with follow(etcd) as following:
        await following.next()
        await following.until(lambda: bool(etcd.watches))
        for number in range(3):
            etcd.put(f"/other/{number}", "not ours")  # moves the store's revision, not our prefix
        etcd.progress()
        await following.until(lambda: following.source.revision == etcd.revision)
        assert following.emitted.empty()
        etcd.outage()
        await following.until(lambda: not following.source.health.connected)
        etcd.restore()
        await following.until(lambda: following.source.health.connected)
        assert etcd.watches[-1] == etcd.revision + 1
