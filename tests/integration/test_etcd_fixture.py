"""The etcd test fixtures: real members on loopback, leader failover and rejoin, compaction, nothing left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

import pytest

from xgate.errors import ProxyError
from xgate.testing.etcd import EtcdCluster, EtcdGatewayError, EtcdProcess, find_etcd, run_etcd

pytestmark = pytest.mark.integration


class _Boom(Exception):
    pass


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            if text in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(IPv4 address, port) of every TCP socket process `pid` listens on; IPv6 ones as ("v6", port)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A: LISTEN
                    address, port = local.split(":")
                    host = "v6" if v6 else socket.inet_ntoa(bytes.fromhex(address)[::-1])
                    found.add((host, int(port, 16)))
    return found


def _port_free(port: int) -> bool:
    """Whether nothing listens on `port`: our own HTTP calls leave TIME_WAIT entries, as servers allow."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_find_etcd_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Path(find_etcd()).name == "etcd"
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ProxyError, match=r"apt-get install etcd-server"):
        find_etcd()


async def test_single_member_serves_on_loopback_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(_Boom):  # the context manager stops etcd even when the body fails
        async with run_etcd(tmp_path) as cluster:
            (member,) = cluster.members
            assert member.pid is not None
            pid, ports = member.pid, (member.client_port, member.peer_port)
            assert cluster.endpoints == [member.endpoint] == [f"127.0.0.1:{member.client_port}"]
            assert member.client_url == f"http://{member.endpoint}"
            assert _listening_addresses(pid) == {("127.0.0.1", member.client_port), ("127.0.0.1", member.peer_port)}
            assert await cluster.leader() is member

            first = await cluster.put("/xgate/routes/a", "one")
            second = await cluster.put("/xgate/routes/b", "two")
            await cluster.put("/xgate/routesx", "not under the prefix")
            assert second == first + 1
            assert await cluster.get_prefix("/xgate/routes/") == {"/xgate/routes/a": "one", "/xgate/routes/b": "two"}
            assert await cluster.get("/xgate/routes/a") == "one"
            assert await cluster.delete("/xgate/routes/a") == 1
            assert await cluster.get("/xgate/routes/a") is None
            assert await cluster.delete_prefix("/xgate/") == 2
            assert await cluster.get_prefix("") == {}
            raise _Boom

    assert member.returncode is not None and not member.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _processes_mentioning(str(tmp_path)) == []
    assert all(_port_free(port) for port in ports)
    assert "level" in member.log_path.read_text()  # zap's JSON lines went to the log file


async def test_three_members_elect_a_new_leader_and_the_old_one_rejoins(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with run_etcd(tmp_path, members=3) as cluster:
        assert loop.time() - started < 5
        assert len(set(cluster.endpoints)) == 3
        old = await cluster.leader()
        await cluster.put("/k/before", "1")

        await old.kill()
        assert not old.running
        killed_at = loop.time()
        new = await cluster.leader(timeout=5)
        assert new is not old and new.running
        assert loop.time() - killed_at < 3
        await cluster.put("/k/during", "2")
        assert await cluster.get_prefix("/k/") == {"/k/before": "1", "/k/during": "2"}

        await old.restart()
        await old.wait_ready(timeout=5)
        assert old.running
        # A serializable read answers from the member's own store: it caught up on what it missed.
        body = {"key": "L2svZHVyaW5n", "serializable": True}  # base64("/k/during")
        for _ in range(100):
            if (await old.call("/v3/kv/range", body)).get("kvs"):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the restarted member did not catch up")
        status = await old.status()
        assert status["leader"] == str(await (await cluster.leader()).member_id())
        pids = [member.pid for member in cluster.members]

    assert all(not member.running for member in cluster.members)
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert _processes_mentioning(str(tmp_path)) == []


async def test_compaction_removes_old_revisions(tmp_path: Path) -> None:
    async with run_etcd(tmp_path) as cluster:
        revisions = [await cluster.put("/c/key", f"v{index}") for index in range(3)]
        await cluster.compact(revisions[1])
        assert await cluster.get_prefix("/c/", revision=revisions[1]) == {"/c/key": "v1"}
        with pytest.raises(EtcdGatewayError, match="compacted") as raised:
            await cluster.get_prefix("/c/", revision=revisions[0])
        assert raised.value.code == 11  # gRPC OUT_OF_RANGE
        assert await cluster.get_prefix("/c/") == {"/c/key": "v2"}


async def test_a_member_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    member = EtcdProcess("bad", tmp_path, extra_args=["--no-such-flag"])
    await member.start()
    try:
        with pytest.raises(ProxyError, match="no-such-flag"):
            await member.wait_ready(timeout=5)
    finally:
        await member.stop()


async def test_cluster_rejects_zero_members(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one member"):
        EtcdCluster(tmp_path, members=0)


async def test_run_etcd_retries_when_a_port_was_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xgate.testing.etcd as etcd_module
    import xgate.testing.ports as ports_module

    real_free_ports = ports_module.free_ports
    calls = 0
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]

        def free_ports(count: int) -> list[int]:
            nonlocal calls
            calls += 1
            ports = real_free_ports(count)
            return [taken, *ports[1:]] if calls == 1 else ports

        monkeypatch.setattr(etcd_module, "free_ports", free_ports)
        async with run_etcd(tmp_path) as cluster:
            assert cluster.members[0].client_port != taken
            assert await cluster.put("/retried", "yes") > 1
    assert calls == 2
    assert _processes_mentioning(str(tmp_path)) == []
