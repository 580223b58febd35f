"""Real etcd members and clusters on loopback ports for integration tests (Debian's etcd 3.4 or any on PATH).

Tests poke etcd through its JSON gateway (`/v3/kv/...`, keys and values base64) so they do not depend on the
etcd client under test. Every process is a child we wait on, dies with us, and is stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from xgate.errors import ProxyError
from xgate.supervisor import OwnedProcess, find_program, log_tail
from xgate.testing.ports import free_ports

_POLL_INTERVAL = 0.05
_PORT_CLASH = "address already in use"

# Raft timing for tests: a follower notices a dead leader after one randomised election timeout (500-1000 ms),
# so a new leader is in place about 1 s after a kill. etcd wants election >= 5 x heartbeat; slower disks than
# loopback tmp dirs would need more.
HEARTBEAT_MS = 50
ELECTION_MS = 500
QUOTA_BYTES = 128 * 1024 * 1024


def find_etcd() -> str:
    """Path of the `etcd` server binary on PATH. Errors: ProxyError when there is none."""
    return find_program("etcd", "etcd-server")


class EtcdGatewayError(ProxyError):
    """etcd answered a JSON gateway request with an error; `code` is the gRPC status code (11: compacted)."""

    def __init__(self, message: str, *, status: int, code: int | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class EtcdProcess(OwnedProcess):
    """One etcd member on 127.0.0.1; its data dir and log file are `<work_dir>/<name>.etcd` and `.log`.

    Alone it forms a one-member cluster; EtcdCluster passes `initial_cluster` and `cluster_token` to form more.
    Errors: ProxyError when etcd is missing, exits during startup or does not become healthy.
    Resources: a child process in its own session (SIGTERMed if we die), the data dir, the log file.
    """

    def __init__(
        self,
        name: str,
        work_dir: Path | str,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        cluster_token: str | None = None,
        etcd_path: str | None = None,
        log_level: str = "warn",
        extra_args: Sequence[str] = (),
    ) -> None:
        if client_port is None or peer_port is None:
            picked = free_ports(2)
            client_port = client_port or picked[0]
            peer_port = peer_port or picked[1]
        self._name = name
        self._work_dir = Path(work_dir)
        self.client_port = client_port
        self.peer_port = peer_port
        self._initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self._token = cluster_token or f"xgate-test-{secrets.token_hex(6)}"
        self._etcd_path = etcd_path
        self._log_level = log_level
        self._extra_args = tuple(extra_args)

    @property
    def name(self) -> str:
        return self._name

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT` of the client URL, the form etcd clients take."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def data_dir(self) -> Path:
        return self._work_dir / f"{self._name}.etcd"

    @property
    def log_path(self) -> Path:
        return self._work_dir / f"{self._name}.log"

    def argv(self) -> list[str]:
        """The command line `start()` runs."""
        return [
            self._etcd_path or find_etcd(),
            *("--name", self._name),
            *("--data-dir", str(self.data_dir)),
            *("--listen-client-urls", self.client_url),
            *("--advertise-client-urls", self.client_url),
            *("--listen-peer-urls", self.peer_url),
            *("--initial-advertise-peer-urls", self.peer_url),
            *("--initial-cluster", self._initial_cluster),
            # Ignored once the data dir holds a member, which is what lets restart() rejoin.
            *("--initial-cluster-state", "new"),
            *("--initial-cluster-token", self._token),
            *("--heartbeat-interval", str(HEARTBEAT_MS)),
            *("--election-timeout", str(ELECTION_MS)),
            # A restarted member must not force an election it would lose anyway. A Go bool flag: "=true",
            # never a separate "true" argument (etcd exits: "'true' is not a valid flag").
            "--pre-vote=true",
            *("--auto-compaction-retention", "0"),
            *("--quota-backend-bytes", str(QUOTA_BYTES)),
            *("--logger", "zap"),
            *("--log-level", self._log_level),
            *self._extra_args,
        ]

    async def start(self) -> None:
        """Start etcd (appending its output to `log_path`); `wait_ready()` waits until it serves."""
        if self.running:
            raise ProxyError(f"etcd member {self._name} is already running")
        self._work_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            await self._spawn(self.argv(), log)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until `/health` says true: this member has a leader and a quorum answers through it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        answer = "no answer"
        while True:
            if not self.running:
                raise ProxyError(f"etcd member {self._name} exited with code {self.returncode}{self._log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                _, body = await _request(self.client_url + "/health", None, timeout=1.0)
                if body.get("health") == "true":
                    return
                answer = json.dumps(body)
            if loop.time() >= deadline:
                raise ProxyError(f"etcd member {self._name} not healthy after {timeout} s ({answer}){self._log_tail()}")
            await asyncio.sleep(_POLL_INTERVAL)

    async def _wait_peer_port(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self.running:
                raise ProxyError(f"etcd member {self._name} exited with code {self.returncode}{self._log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                status, _ = await _request(self.peer_url + "/members", None, timeout=1.0)
                if status == 200:
                    return
            if loop.time() >= deadline:
                raise ProxyError(f"etcd member {self._name} did not serve its peer port within {timeout} s")
            await asyncio.sleep(_POLL_INTERVAL / 5)

    async def _wait_stepped_down(self) -> None:
        while self.running:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                status = await self.status(timeout=1.0)
                if status.get("leader") != status["header"]["member_id"]:
                    return
            await asyncio.sleep(_POLL_INTERVAL)

    async def restart(self, grace: float = 5.0) -> None:
        """Stop if running, then start again on the same ports and data dir; `wait_ready()` waits."""
        await self.stop(grace)
        await self.start()

    async def status(self, timeout: float = 2.0) -> dict[str, Any]:
        """This member's `/v3/maintenance/status`: header.member_id, leader, raftTerm... (int64 as strings)."""
        return await self.call("/v3/maintenance/status", {}, timeout=timeout)

    async def member_id(self) -> int:
        return int((await self.status())["header"]["member_id"])

    async def call(self, path: str, body: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """POST `body` to a JSON gateway path of this member, e.g. "/v3/kv/range"; returns the decoded answer.

        Errors: EtcdGatewayError when etcd answers with an error; aiohttp.ClientError or TimeoutError when it
        does not answer.
        """
        status, answer = await _request(self.client_url + path, body, timeout)
        if status != 200 or "error" in answer:
            message = answer.get("message") or answer.get("error") or json.dumps(answer)
            raise EtcdGatewayError(
                f"etcd {self._name} {path} answered {status}: {message}", status=status, code=answer.get("code")
            )
        return answer

    def _log_tail(self, lines: int = 20) -> str:
        # etcd names a bad flag first, then prints its usage: keep the first lines too.
        return log_tail(self.log_path, lines, head=3)


class EtcdCluster:
    """`members` etcd processes on loopback forming one cluster (1 or 3 is usual), plus JSON gateway helpers.

    Helpers send each request to the first running member that answers, so they keep working while a
    minority is down. Errors and resources: as EtcdProcess, times `members`.
    """

    def __init__(
        self, work_dir: Path | str, members: int = 1, *, etcd_path: str | None = None, log_level: str = "warn"
    ) -> None:
        if members < 1:
            raise ValueError(f"an etcd cluster needs at least one member, not {members}")
        ports = free_ports(2 * members)
        names = [f"etcd{index}" for index in range(members)]
        initial = ",".join(f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names))
        token = f"xgate-test-{secrets.token_hex(6)}"
        self.members: list[EtcdProcess] = [
            EtcdProcess(
                name,
                work_dir,
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                initial_cluster=initial,
                cluster_token=token,
                etcd_path=etcd_path,
                log_level=log_level,
            )
            for i, name in enumerate(names)
        ]

    @property
    def endpoints(self) -> list[str]:
        """`127.0.0.1:PORT` of every member's client URL."""
        return [member.endpoint for member in self.members]

    async def start(self, timeout: float = 10.0) -> None:
        """Start every member, one after the other; `wait_ready()` waits until they serve clients.

        A new member first asks every peer URL whether it already belongs to the cluster, waiting up to 1 s
        (a fixed timeout in 3.4) for a peer whose port is bound but not yet served. Started all at once, the
        members each wait that second per peer; started once the one before serves its peer port, they ask
        peers that either answer or refuse, and a 3-member cluster is ready in about 0.3 s instead of 2.3 s.
        """
        for index, member in enumerate(self.members):
            await member.start()
            if index + 1 < len(self.members):
                await member._wait_peer_port(timeout)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until every member is healthy. Errors: the first member's ProxyError."""
        try:
            async with asyncio.TaskGroup() as group:
                for member in self.members:
                    group.create_task(member.wait_ready(timeout))
        except ExceptionGroup as failed:
            # The TaskGroup cancelled the other waits; one reason is enough and keeps `except ProxyError` usable.
            raise _first_leaf(failed) from None

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the followers, then the leader once it has stepped down.

        A stopping leader hands leadership to the peer it thinks is connected and waits up to 6 s (5 s plus
        two election timeouts) for it. Just after its followers exit it may still think one is connected and
        wait for nothing; once it has noticed it lost its quorum (one election timeout) it stops at once.
        """
        leader: EtcdProcess | None = None
        if len(self.members) > 1:
            with contextlib.suppress(ProxyError):
                leader = await self.leader(timeout=0)
        await asyncio.gather(*(member.stop(grace) for member in self.members if member is not leader))
        if leader is not None:
            with contextlib.suppress(ProxyError, TimeoutError):
                await asyncio.wait_for(leader._wait_stepped_down(), grace)
            await leader.stop(grace)

    async def leader(self, timeout: float = 5.0) -> EtcdProcess:
        """The running member that is leader, waiting up to `timeout` s for one to be elected.

        A member counts only if it says itself that it leads: followers keep naming a killed leader until
        they time out.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            best: tuple[int, EtcdProcess] | None = None
            for member in self.members:
                if not member.running:
                    continue
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ProxyError):
                    status = await member.status(timeout=1.0)
                    term = int(status["raftTerm"])
                    if status.get("leader") == status["header"]["member_id"] and (best is None or term > best[0]):
                        best = (term, member)
            if best is not None:
                return best[1]
            if loop.time() >= deadline:
                raise ProxyError(f"no etcd leader elected within {timeout} s")
            await asyncio.sleep(_POLL_INTERVAL)

    async def call(self, path: str, body: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """POST to the first running member that answers (see EtcdProcess.call)."""
        failures: list[str] = []
        for member in self.members:
            if not member.running:
                continue
            try:
                return await member.call(path, body, timeout)
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{member.name}: {exc!r}")
        raise ProxyError(f"no etcd member answered {path}: {'; '.join(failures) or 'none is running'}")

    async def put(self, key: str, value: str | bytes) -> int:
        """Set `key`; returns the store revision after the write."""
        answer = await self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(answer["header"]["revision"])

    async def get(self, key: str) -> str | None:
        answer = await self.call("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs", [])
        return _unb64(kvs[0]["value"]) if kvs else None

    async def get_prefix(self, prefix: str, *, revision: int | None = None) -> dict[str, str]:
        """Every key starting with `prefix` and its value, at `revision` (default: latest).

        Errors: EtcdGatewayError with code 11 when `revision` has been compacted.
        """
        body: dict[str, Any] = _prefix_range(prefix)
        if revision is not None:
            body["revision"] = revision
        answer = await self.call("/v3/kv/range", body)
        return {_unb64(kv["key"]): _unb64(kv.get("value", "")) for kv in answer.get("kvs", [])}

    async def delete(self, key: str) -> int:
        """Delete `key`; returns how many keys were deleted (0 or 1)."""
        answer = await self.call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(answer.get("deleted", 0))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix`; returns how many were deleted."""
        answer = await self.call("/v3/kv/deleterange", _prefix_range(prefix))
        return int(answer.get("deleted", 0))

    async def compact(self, revision: int) -> None:
        """Compact history up to `revision` and wait until the member that served it has done so physically."""
        await self.call("/v3/kv/compaction", {"revision": revision, "physical": True})

    def _discard(self) -> None:
        # Only after a failed first start: a half-made data dir would make a retry rejoin the old cluster.
        for member in self.members:
            shutil.rmtree(member.data_dir, ignore_errors=True)
            member.log_path.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def run_etcd(
    work_dir: Path | str,
    members: int = 1,
    *,
    timeout: float = 10.0,
    etcd_path: str | None = None,
    log_level: str = "warn",
) -> AsyncIterator[EtcdCluster]:
    """Start an etcd cluster of `members` under `work_dir`, wait until every member is healthy, yield it, stop it.

    Picks new ports and retries (up to 3 times) if another process took a port between picking and binding.
    Errors: ProxyError when etcd is missing or the cluster does not become healthy within `timeout` s.
    """
    for attempt in range(3):
        cluster = EtcdCluster(work_dir, members, etcd_path=etcd_path, log_level=log_level)
        try:
            await cluster.start(timeout)
            await cluster.wait_ready(timeout)
            break
        except ProxyError:
            await cluster.stop()
            clash = any(_PORT_CLASH in member._log_tail(50) for member in cluster.members)
            if not clash or attempt == 2:
                raise
            cluster._discard()
        except BaseException:
            await cluster.stop()
            raise
    try:
        yield cluster
    finally:
        await cluster.stop()


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def _unb64(data: str) -> str:
    return base64.b64decode(data).decode()


def _prefix_range(prefix: str) -> dict[str, str]:
    """The key and range_end of a range request for every key starting with `prefix`."""
    key = prefix.encode()
    # etcd refuses an empty key; "\0" up to range_end "\0" means every key.
    return {"key": _b64(key or b"\0"), "range_end": _b64(_prefix_end(key))}


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's range_end for a prefix)."""
    for index in range(len(prefix) - 1, -1, -1):
        if prefix[index] < 0xFF:
            return prefix[:index] + bytes([prefix[index] + 1])
    return b"\0"  # all keys


async def _request(url: str, body: Mapping[str, Any] | None, timeout: float) -> tuple[int, dict[str, Any]]:
    # A session per request: a pooled connection to a member we just killed would fail the next call.
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url) if body is None else session.post(url, json=body) as response,
    ):
        text = await response.text()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"error": text.strip()}
        return response.status, answer if isinstance(answer, dict) else {"answer": answer}
