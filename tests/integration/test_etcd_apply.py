"""`xgate apply` against a real etcd: what a concurrent writer leaves behind, and the exit code that says so."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from xgate.cli.etcdstore import ConflictError, PartialApplyError, execute, plan_apply, read_stored
from xgate.config.load import parse_document
from xgate.sources.etcd.client import EtcdClient, EtcdSettings
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


GATEWAY = """
xgate: v1
plugins:
  cors: {allow_origins: ["*"], max_age: 10m}
  dyeing:
    rules: [{stage: canary, header: {name: x-canary, exact: "1"}}]
listeners:
  - {name: public, port: 10000, plugins: {cors: false}}
upstreams:
  - name: stable
    endpoints: ["127.0.0.1:18081", {host: 127.0.0.1, port: 18083, weight: 3}]
    connect_timeout: 250ms
  - name: next
    endpoints: ["127.0.0.1:18082"]
    health_check: {path: /healthz, interval: 2s, timeout: 1.5}
routes:
  - name: users
    match: {path: {prefix: /users}, methods: [get, post]}
    upstream: stable
    canary: {stage: canary, upstream: next}
    timeout: 5s
    retries: {attempts: 2, retry_on: [reset], per_try_timeout: 90}
  - {name: health, match: {path: {exact: /healthz}}, direct_response: {status: 200, body: ok}}
"""


async def test_get_prints_what_apply_takes_back_unchanged(etcd: EtcdCluster, tmp_path: Path) -> None:
    """kubectl's habit: `get -o yaml > file; apply -f file` changes nothing; durations read as written."""
    target = ",".join(etcd.endpoints)
    config = tmp_path / "gateway.yaml"
    config.write_text(GATEWAY)
    code, out, err = await run_cli("apply", "-f", str(config), "--etcd", target)
    assert code == 0, out + err
    stored = json.loads(await etcd.get("/xgate/route/users") or "{}")
    assert (stored["timeout"], stored["retries"]["per_try_timeout"]) == ("5s", "90s")

    for output in ("yaml", "json"):
        code, out, err = await run_cli("get", "-o", output, "--etcd", target)
        assert code == 0, err
        document = yaml.safe_load(out)  # JSON is YAML too
        users, upstreams = document["routes"][1], {item["name"]: item for item in document["upstreams"]}
        assert (users["timeout"], users["retries"]["per_try_timeout"]) == ("5s", "90s")
        assert upstreams["stable"]["connect_timeout"] == "250ms"
        assert upstreams["next"]["health_check"] == {"path": "/healthz", "interval": "2s", "timeout": "1.5s"}
        saved = tmp_path / f"saved.{output}"
        saved.write_text(out)
        before = await etcd.get_prefix("/xgate/")
        code, out, err = await run_cli("apply", "-f", str(saved), "--etcd", target)
        assert (code, out.strip()) == (0, out.strip().splitlines()[-1]), out + err
        assert out.startswith("no changes: 7 unchanged"), out
        code, out, err = await run_cli("diff", "-f", str(saved), "--etcd", target)
        assert code == 0 and "0 objects would change" in out, out + err
        assert await etcd.get_prefix("/xgate/") == before

    # One kind, one object: a document too.
    code, out, _ = await run_cli("get", "route", "users", "-o", "yaml", "--etcd", target)
    assert code == 0 and out.startswith("xgate: v1\nroutes:\n- name: users\n"), out


async def test_get_prints_readable_tables_and_only_its_output_formats(etcd: EtcdCluster, tmp_path: Path) -> None:
    target = ",".join(etcd.endpoints)
    config = tmp_path / "gateway.yaml"
    config.write_text(GATEWAY)
    assert (await run_cli("apply", "-f", str(config), "--etcd", target)).code == 0

    code, out, err = await run_cli("get", "routes", "--etcd", target)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["ROUTE", "HOSTS", "MATCH", "ACTION", "CANARY", "PLUGINS"]
    assert rows[0].split()[0] == "health" and "respond 200" in rows[0]
    assert rows[1].split()[:3] == ["users", "*", "/users"] and "-> stable" in rows[1] and "canary->next" in rows[1]
    code, out, _ = await run_cli("get", "upstream", "stable", "-o", "wide", "--etcd", target)
    assert code == 0 and "127.0.0.1:18081,127.0.0.1:18083*3" in out and "250ms" in out, out
    code, out, _ = await run_cli("get", "--etcd", target)  # every kind, one table each
    headers = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].isupper()]
    assert headers == ["LISTENER", "UPSTREAM", "ROUTE", "PLUGIN"], out
    code, _, err = await run_cli("get", "routes", "-o", "xml", "--etcd", target)
    assert code == 2 and "'xml' is not one of" in err, err


async def test_apply_dry_run_writes_nothing(etcd: EtcdCluster, tmp_path: Path) -> None:
    target = ",".join(etcd.endpoints)
    config = tmp_path / "gateway.yaml"
    config.write_text(GATEWAY)
    code, out, err = await run_cli("apply", "-f", str(config), "--etcd", target, "--dry-run")
    assert code == 0, err
    assert "create route/users (dry run)" in out and "7 would change, 0 unchanged (dry run: nothing was written)" in out
    assert await etcd.get_prefix("/xgate/") == {}


async def test_apply_prune_deletes_what_the_files_no_longer_hold(etcd: EtcdCluster, tmp_path: Path) -> None:
    """decK's sync: objects under the prefix the files lack are deleted, under the same validation and
    mod_revision guard as the writes; keys that are not xgate objects stay; deleting everything needs --force."""
    target = ",".join(etcd.endpoints)
    config = tmp_path / "gateway.yaml"
    config.write_text(GATEWAY)
    assert (await run_cli("apply", "-f", str(config), "--etcd", target)).code == 0
    await etcd.put("/xgate/notes", "kept: not an xgate object")
    await etcd.put("/xgate/route/stray", "{not json")  # an invalid value the files do not hold: pruned too

    # Dropping the canary's upstream while a route still uses it: refused, located in the file.
    next_upstream = GATEWAY[GATEWAY.index("  - name: next") : GATEWAY.index("routes:")]
    smaller = GATEWAY.replace(next_upstream, "")
    config.write_text(smaller)
    before = await etcd.get_prefix("/xgate/")
    code, _, err = await run_cli("apply", "-f", str(config), "--etcd", target, "--prune")
    assert code == 2 and f"{config}:17: route users field canary.0.upstream: upstream 'next' does not exist" in err
    assert await etcd.get_prefix("/xgate/") == before

    config.write_text(smaller.replace("    canary: {stage: canary, upstream: next}\n", ""))
    code, out, err = await run_cli("diff", "-f", str(config), "--etcd", target, "--prune")
    assert code == 1 and "delete upstream/next" in out and "envoy: - clusters upstream/next" in out, out + err
    code, out, err = await run_cli("apply", "-f", str(config), "--etcd", target, "--prune")
    assert code == 0, out + err
    assert "deleted upstream/next" in out and "deleted route/stray" in out and "updated route/users" in out
    assert sorted(await etcd.get_prefix("/xgate/")) == [
        "/xgate/listener/public",
        "/xgate/notes",
        "/xgate/plugin/cors",
        "/xgate/plugin/dyeing",
        "/xgate/route/health",
        "/xgate/route/users",
        "/xgate/upstream/stable",
    ]

    # A file that holds none of the stored objects (a wrong path or prefix?) prunes nothing without --force.
    other = tmp_path / "other.yaml"
    other.write_text("routes: [{name: solo, direct_response: {status: 204}}]\n")
    before = await etcd.get_prefix("/xgate/")
    code, _, err = await run_cli("apply", "-f", str(other), "--etcd", target, "--prune")
    assert code == 2 and "would delete every object under /xgate/ (6)" in err and "--force" in err, err
    assert await etcd.get_prefix("/xgate/") == before
    code, out, err = await run_cli("apply", "-f", str(other), "--etcd", target, "--prune", "--force")
    assert code == 0, out + err
    assert sorted(await etcd.get_prefix("/xgate/")) == ["/xgate/notes", "/xgate/route/solo"]


async def test_apply_locates_reference_issues_in_the_file(etcd: EtcdCluster, tmp_path: Path) -> None:
    """A route naming an upstream that is neither in the file nor in etcd: the file and line, not `etcd:`."""
    target = ",".join(etcd.endpoints)
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "a.yaml").write_text("listeners: [{name: public, port: 1}]\n")
    (folder / "b.yaml").write_text(
        "routes:\n  - {name: ok, direct_response: {status: 200}}\n  - {name: r, upstream: gone}\n"
    )
    code, _, err = await run_cli("apply", "-f", str(folder), "--etcd", target)
    assert code == 2, err
    assert f"{folder / 'b.yaml'}:3: route r field upstream: upstream 'gone' does not exist" in err, err
    assert "etcd" not in err.replace("--etcd", "")
    assert await etcd.get_prefix("/xgate/") == {}
