"""Fault-test helpers: a bounded steady HTTP load that records every answer, and Envoy's view of each endpoint
(health flags, counters), for tests and benchmarks that kill, hang or break upstreams under traffic.

The load is a plain HTTP/1.1 keep-alive client on asyncio streams (no HTTP library: it must cost little CPU on
a 2-core machine that also runs Envoy and the upstreams). It is paced (`rate` requests per second in all) and
bounded (`max_seconds`, `max_requests`): it stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from xgate.proxy.process import EnvoyProcess


@dataclass(frozen=True)
class Answer:
    """One request: when it was sent and answered (loop time, s), the status (0: the connection failed), the
    upstream that answered (its `x-upstream` header) and whether Envoy said it was overloaded."""

    sent: float
    done: float
    status: int
    upstream: str = ""
    overloaded: bool = False


@dataclass
class SteadyLoad:
    """The answers so far of a running load (see steady_load)."""

    answers: list[Answer] = field(default_factory=list)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def since(self, moment: float) -> list[Answer]:
        """Answers to requests sent at or after `moment` (loop time)."""
        return [answer for answer in self.answers if answer.sent >= moment]

    def errors(self, since: float = 0.0) -> list[Answer]:
        """Answers other than 2xx to requests sent at or after `since`."""
        return [answer for answer in self.since(since) if not 200 <= answer.status < 300]

    def served_by(self, since: float = 0.0) -> dict[str, int]:
        """Successful answers per upstream name, for requests sent at or after `since`."""
        counts: dict[str, int] = {}
        for answer in self.since(since):
            if 200 <= answer.status < 300:
                counts[answer.upstream] = counts.get(answer.upstream, 0) + 1
        return counts

    async def wait_answers(self, count: int, since: float = 0.0, timeout: float = 10.0) -> None:
        """Wait until `count` requests sent at or after `since` were answered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.since(since)) < count:
            if self.stopped.is_set() or loop.time() > deadline:
                raise TimeoutError(f"the load got {len(self.since(since))} of {count} answers")
            await asyncio.sleep(0.01)


async def _one_connection(
    load: SteadyLoad, host: str, port: int, request: bytes, period: float, until: float, budget: list[int]
) -> None:
    loop = asyncio.get_running_loop()
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    next_at = loop.time()
    while loop.time() < until and budget[0] > 0 and not load.stopped.is_set():
        budget[0] -= 1
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        next_at = max(next_at + period, loop.time() - period)  # paced; a late request does not start a burst
        sent = loop.time()
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            status, headers = await _read_answer(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            load.answers.append(Answer(sent, loop.time(), 0))
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        overloaded = headers.get("x-envoy-overloaded") == "true"
        load.answers.append(Answer(sent, loop.time(), status, headers.get("x-upstream", ""), overloaded))
        if headers.get("connection") == "close":
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers


@contextlib.asynccontextmanager
async def steady_load(
    url_host: str,
    port: int,
    path: str = "/",
    *,
    rate: float = 400.0,
    connections: int = 8,
    max_seconds: float = 30.0,
    max_requests: int = 100_000,
    method: str = "GET",
) -> AsyncIterator[SteadyLoad]:
    """GET (or `method`) `path` on `url_host:port` at about `rate` requests per second over `connections`
    keep-alive connections, from entering the block until leaving it, `max_seconds` or `max_requests`."""
    load = SteadyLoad()
    loop = asyncio.get_running_loop()
    until = loop.time() + max_seconds
    request = f"{method} {path} HTTP/1.1\r\nHost: {url_host}:{port}\r\nContent-Length: 0\r\n\r\n".encode()
    period = connections / rate
    budget = [max_requests]
    tasks = [
        asyncio.create_task(_one_connection(load, url_host, port, request, period, until, budget))
        for _ in range(connections)
    ]
    try:
        yield load
    finally:
        load.stopped.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def endpoint_health(envoy: EnvoyProcess, cluster: str) -> dict[str, set[str]]:
    """address -> the health flags Envoy's admin reports for it in `cluster` (empty: healthy), e.g.
    {"failed_outlier_check"} or {"failed_active_health_check"}."""
    status, body = await envoy.admin_get("/clusters?format=json")
    if status != 200:
        raise RuntimeError(f"Envoy's admin /clusters answered {status}: {body[:200]}")
    found: dict[str, set[str]] = {}
    for entry in json.loads(body).get("cluster_statuses", []):
        if entry["name"] != cluster:
            continue
        for host in entry.get("host_statuses", []):
            address = host["address"]["socket_address"]
            flags = {name for name, value in host["health_status"].items() if value is True}
            if host["health_status"].get("eds_health_status", "HEALTHY") != "HEALTHY":
                flags.add(host["health_status"]["eds_health_status"])
            found[f"{address['address']}:{address['port_value']}"] = flags
    return found


async def counters(envoy: EnvoyProcess, prefix: str) -> dict[str, int]:
    """Envoy's counters and gauges whose names start with `prefix` (e.g. "cluster.upstream/app.")."""
    status, body = await envoy.admin_get("/stats?format=json&filter=" + urllib.parse.quote("^" + re.escape(prefix)))
    if status != 200:
        raise RuntimeError(f"Envoy's admin /stats answered {status}: {body[:200]}")
    return {
        stat["name"]: int(stat["value"])
        for stat in json.loads(body).get("stats", [])
        if isinstance(stat.get("value"), int) and stat["name"].startswith(prefix)
    }
