"""A small asyncio etcd v3 client on grpc.aio: several endpoints with failover, TLS, user/password auth.

aetcd's generated stubs are used for the wire protocol; its Client is not, because it takes one endpoint
and no TLS, and a fleet's etcd is a 3- or 5-member cluster that must survive losing its leader.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aetcd.rpc import rpc_pb2, rpc_pb2_grpc
from aetcd.rpc.kv_pb2 import Event

# The errors are the store protocol's (kv.py); imported "as" themselves to keep them importable from here.
from xgate.sources.etcd.kv import CompactedError as CompactedError
from xgate.sources.etcd.kv import EtcdRequestError as EtcdRequestError
from xgate.sources.etcd.kv import EtcdUnavailableError as EtcdUnavailableError
from xgate.sources.etcd.kv import KeyValue, WatchEvent

# An etcd that stops answering is seen as down within KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS (9 s).
KEEPALIVE_TIME_MS = 6000
KEEPALIVE_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd: `endpoints` as host:port (or http(s)://host:port), TLS files, optional user."""

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 5.0

    @classmethod
    def parse(cls, urls: str, **options: object) -> EtcdSettings:
        endpoints = tuple(url.strip() for url in urls.split(",") if url.strip())
        return cls(endpoints=endpoints, **options)  # type: ignore[arg-type]

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or any(e.startswith("https://") for e in self.endpoints)

    def target(self) -> str:
        """A gRPC target over every endpoint: gRPC fails over between them (pick_first)."""
        hosts = [endpoint.split("://", 1)[-1].rstrip("/") for endpoint in self.endpoints]
        if len(hosts) == 1:
            return hosts[0]
        families = {_family(host) for host in hosts}
        if families == {"ipv4"}:
            return "ipv4:" + ",".join(hosts)
        if families == {"ipv6"}:
            return "ipv6:" + ",".join(hosts)
        raise ValueError("several etcd endpoints must all be IP addresses (put names behind one DNS name)")


def _family(host_port: str) -> str:
    host = host_port.rsplit(":", 1)[0].strip("[]")
    try:
        return "ipv6" if ipaddress.ip_address(host).version == 6 else "ipv4"
    except ValueError:
        return "name"


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with `prefix` (etcd's convention)."""
    end = bytearray(prefix)
    for index in range(len(end) - 1, -1, -1):
        if end[index] < 0xFF:
            end[index] += 1
            return bytes(end[: index + 1])
    return b"\0"


class EtcdClient:
    """The calls xgate needs: read a prefix, transactions, watch a prefix from a revision, status."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        options = [
            ("grpc.lb_policy_name", "pick_first"),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", 64 << 20),
            # A frozen etcd (SIGSTOP, a hung host, a dropped route) keeps its TCP connection open and the watch
            # stream silent: without pings the source would say "connected" forever. A ping unanswered within
            # KEEPALIVE_TIMEOUT_MS closes the connection, the watch fails, status shows the outage. etcd refuses
            # pings more often than every 5 s (--grpc-keepalive-min-time) with GOAWAY, hence 6 s; pings go out
            # while a call (the watch) is open, with or without data. grpcio 1.85 waits for a ping's answer
            # ping_timeout_ms (default 1 min), not keepalive_timeout_ms alone: both are set.
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ]
        target = settings.target()
        if settings.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(settings.ca_file),
                private_key=_read(settings.key_file),
                certificate_chain=_read(settings.cert_file),
            )
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._kv = rpc_pb2_grpc.KVStub(self._channel)
        self._watch = rpc_pb2_grpc.WatchStub(self._channel)
        self._maintenance = rpc_pb2_grpc.MaintenanceStub(self._channel)
        self._auth = rpc_pb2_grpc.AuthStub(self._channel)
        self._token: str | None = None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self.settings.username is None:
            return ()
        if self._token is None:
            request = rpc_pb2.AuthenticateRequest(name=self.settings.username, password=self.settings.password or "")
            response = await self._call(self._auth.Authenticate, request, authenticate=False)
            self._token = response.token
        return (("token", self._token),)

    async def _call(self, method: Any, request: Any, *, authenticate: bool = True) -> Any:
        for attempt in (1, 2):
            metadata = await self._metadata() if authenticate else ()
            try:
                return await method(request, timeout=self.settings.timeout, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if attempt == 1 and authenticate and "auth token" in (exc.details() or ""):
                    self._token = None  # expired token: authenticate again once
                    continue
                raise _translate(exc) from None
        raise AssertionError("unreachable")

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix`, and the store revision they were read at."""
        request = rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix))
        response = await self._call(self._kv.Range, request)
        return response.header.revision, [KeyValue(kv.key, kv.value, kv.mod_revision) for kv in response.kvs]

    async def get(self, key: bytes) -> KeyValue | None:
        response = await self._call(self._kv.Range, rpc_pb2.RangeRequest(key=key))
        return next((KeyValue(kv.key, kv.value, kv.mod_revision) for kv in response.kvs), None)

    async def put(self, key: bytes, value: bytes) -> int:
        response = await self._call(self._kv.Put, rpc_pb2.PutRequest(key=key, value=value))
        return int(response.header.revision)

    async def delete(self, key: bytes) -> int:
        response = await self._call(self._kv.DeleteRange, rpc_pb2.DeleteRangeRequest(key=key))
        return int(response.header.revision)

    async def txn(self, compare: Sequence[rpc_pb2.Compare], success: Sequence[rpc_pb2.RequestOp]) -> tuple[bool, int]:
        """Run `success` if every comparison holds; return (succeeded, revision)."""
        response = await self._call(self._kv.Txn, rpc_pb2.TxnRequest(compare=compare, success=success))
        return bool(response.succeeded), int(response.header.revision)

    async def compact(self, revision: int) -> None:
        await self._call(self._kv.Compact, rpc_pb2.CompactionRequest(revision=revision, physical=True))

    async def status(self) -> rpc_pb2.StatusResponse:
        return await self._call(self._maintenance.Status, rpc_pb2.StatusRequest())

    async def watch_prefix(
        self, prefix: bytes, start_revision: int
    ) -> AsyncGenerator[tuple[int, list[WatchEvent]], None]:
        """Yield (revision, events) from `start_revision` on; a batch without events is a progress
        notification saying every change up to `revision` was sent. The first batch, once etcd created the
        watch, is (start_revision - 1, []): the watch is up, and it claims nothing not asked for (the events
        up to the current revision may still follow). Raises CompactedError."""
        create = rpc_pb2.WatchCreateRequest(
            key=prefix, range_end=prefix_end(prefix), start_revision=start_revision, progress_notify=True
        )
        requests: asyncio.Queue[rpc_pb2.WatchRequest | None] = asyncio.Queue()
        requests.put_nowait(rpc_pb2.WatchRequest(create_request=create))

        async def outgoing() -> AsyncIterator[rpc_pb2.WatchRequest]:
            while (request := await requests.get()) is not None:
                yield request

        call = self._watch.Watch(outgoing(), metadata=await self._metadata())
        try:
            async for response in call:
                if response.compact_revision:
                    raise CompactedError(response.compact_revision)
                if response.canceled:
                    raise EtcdUnavailableError(f"etcd cancelled the watch: {response.cancel_reason}")
                if response.created and not response.events:
                    yield start_revision - 1, []
                    continue
                events = [
                    WatchEvent(event.kv.key, event.kv.value, event.kv.mod_revision, event.type == Event.DELETE)
                    for event in response.events
                ]
                revision = max((event.mod_revision for event in events), default=response.header.revision)
                yield revision, events
            raise EtcdUnavailableError("etcd closed the watch stream")
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from None
        finally:
            requests.put_nowait(None)
            call.cancel()


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def _translate(exc: grpc.aio.AioRpcError) -> Exception:
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return EtcdUnavailableError(f"etcd unavailable: {exc.details()}")
    if "compacted" in (exc.details() or ""):
        return CompactedError(0)
    hint = ""
    if "request is too large" in (exc.details() or ""):
        hint = " (etcd's --max-request-bytes, 1.5 MiB unless set: apply fewer objects at once, or raise it)"
    return EtcdRequestError(f"etcd refused the request ({code.name}): {exc.details()}{hint}")
