"""`xgate apply` against a real etcd: what a concurrent writer leaves behind, and the exit code that says so."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from xgate.config.load import parse_document
from xgate.sources.etcd.client import EtcdClient, EtcdSettings
from xgate.sources.etcd.store import ConflictError, PartialApplyError, execute, plan_apply, read_stored
from xgate.testing import EtcdCluster, run_cli, run_etcd

pytestmark = pytest.mark.integration

INTRUDER = "/xgate/route/intruder"


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    async with run_etcd(tmp_path / "etcd") as cluster:
        yield cluster


@pytest.fixture
def settings(etcd: EtcdCluster) -> EtcdSettings:
    return EtcdSettings(endpoints=tuple(etcd.endpoints))


def many_routes(count: int, status: int = 200) -> str:
    routes = "".join(
        f"  - {{name: r{i:04}, match: {{path: {{prefix: /r{i}/}}}}, direct_response: {{status: {status}}}}}\n"
        for i in range(count)
    )
    return "listeners: [{name: public, port: 1}]\nroutes:\n" + routes


async def _write_after_first_batch(settings: EtcdSettings, start_revision: int) -> None:
    """Another writer: as soon as the apply's first transaction shows in the watch, it adds a route of its own."""
    async with EtcdClient(settings) as client:
        async for _, events in client.watch_prefix(b"/xgate/", start_revision):
            if events:
                await client.put(INTRUDER.encode(), b'{"direct_response": {"status": 418}}')
                return


async def test_cli_apply_that_meets_a_concurrent_writer_leaves_nothing_behind(
    etcd: EtcdCluster, settings: EtcdSettings, tmp_path: Path
) -> None:
    """1,000 routes go in 8 transactions; a writer racing in after the first one stops the apply. Exit 3 must
    mean what the README says: none of the apply's objects are in etcd, the other writer's key is."""
    config = tmp_path / "big.yaml"
    config.write_text(many_routes(1000))
    target = ",".join(etcd.endpoints)
    conflicts_after_first_batch = 0
    for _ in range(5):
        await etcd.delete_prefix("/xgate/")
        revision = await etcd.put("/xgate/marker", "not an object")  # outside the object layout: never touched
        writer = asyncio.create_task(_write_after_first_batch(settings, revision + 1))
        code, out, err = await run_cli("apply", "-f", str(config), "--etcd", target, timeout=60)
        await asyncio.wait_for(writer, 10)
        stored = await etcd.get_prefix("/xgate/")
        if code == 0:  # the writer came after the last transaction: everything applied, theirs too
            assert len(stored) == 1003, out + err
            continue
        assert code == 3, out + err
        assert sorted(stored) == ["/xgate/marker", INTRUDER], f"{len(stored)} keys left by exit 3: {err}"
        assert "nothing of this apply remains" in err, err
        if "were undone" in err:
            conflicts_after_first_batch += 1
            break
    assert conflicts_after_first_batch, "the concurrent writer never came between two transactions"


async def test_undo_after_a_conflict_restores_old_values_and_keeps_the_other_writers(
    etcd: EtcdCluster, settings: EtcdSettings
) -> None:
    """The undo of the batches already written is guarded by the mod_revision each batch produced: values the
    apply replaced come back byte for byte, keys it created go, and a key the other writer changed after the
    apply wrote it keeps the other writer's value."""
    await etcd.put("/xgate/route/r0003", '{"direct_response": {"status": 200}, "name": "r0003"}')  # as another tool
    await etcd.put("/xgate/route/r0150", '{"direct_response":{"status":201}}')
    before = await etcd.get_prefix("/xgate/")
    written: list[int] = []

    async def writer(batch: int) -> None:
        written.append(batch)
        if batch == 2:  # after the second of three batches: change one key the apply wrote, add one
            await etcd.put("/xgate/route/r0007", '{"direct_response": {"status": 503}}')
            await etcd.put(INTRUDER, '{"direct_response": {"status": 418}}')

    async with EtcdClient(settings) as client:
        plan = plan_apply(await read_stored(client, "/xgate/"), parse_document(many_routes(250, 204), "t"), "/xgate/")
        with pytest.raises(ConflictError) as caught:
            await execute(client, plan, max_ops=100, after_batch=writer)
    assert written == [1, 2]
    message = str(caught.value)
    assert "batches 1-2 of 3 were undone" in message and "nothing of this apply remains" in message, message
    assert "/xgate/route/r0007 was changed by another writer since and keeps that change" in message, message
    after = await etcd.get_prefix("/xgate/")
    expected = {
        **before,
        "/xgate/route/r0007": '{"direct_response": {"status": 503}}',
        INTRUDER: '{"direct_response": {"status": 418}}',
    }
    assert after == expected
    assert json.loads(after["/xgate/route/r0150"]) == {"direct_response": {"status": 201}}


async def test_an_apply_cut_off_by_etcd_going_away_says_what_it_wrote(etcd: EtcdCluster) -> None:
    """When etcd goes away after the first of two transactions, the undo cannot run either: the error lists
    exactly the changes that are in etcd, and they are there once etcd is back."""
    member = etcd.members[0]
    quick = EtcdSettings(endpoints=tuple(etcd.endpoints), timeout=1.0)

    async def stop_etcd(batch: int) -> None:
        await member.stop()

    async with EtcdClient(quick) as client:
        plan = plan_apply(await read_stored(client, "/xgate/"), parse_document(many_routes(150), "t"), "/xgate/")
        with pytest.raises(PartialApplyError) as caught:
            await execute(client, plan, max_ops=100, after_batch=stop_etcd)
    assert "batch 1 of 2 was written (100 changes) and is in etcd" in str(caught.value)
    written = [f"/xgate/{change.kind}/{change.name}" for change in caught.value.written]
    await member.start()
    await member.wait_ready()
    assert sorted(await etcd.get_prefix("/xgate/")) == sorted(written)
    assert written[0] == "/xgate/listener/public" and len(written) == 100
