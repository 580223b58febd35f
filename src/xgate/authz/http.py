"""The lean transport of `xgate authz`: Envoy's HTTP ext_authz mode, one asyncio Protocol, no thread hops.

A route whose policy runs here with `transport: http` (the policy plugin) sends each check as a plain HTTP/1.1
request on a kept-alive connection: the original method, path and headers, plus headers Envoy fills in itself
(never the client: they are not among the headers passed on, see translate/plugins/policy.py): `x-xgate-policy`
(the route's policy, from route metadata), `x-xgate-route`, `x-xgate-source` (the client's address) and
`x-xgate-claims` (jwt_authn's verified payload as JSON; absent without a token). The answer: 200 with the Allow's
headers (Envoy sets them on the upstream request), or the Deny's status, body and headers.

Why: measured under bench/auth.py's load, a gRPC check cost ~0.3-0.5 ms of CPU, nearly all of it grpcio's
server machinery (its completion-queue thread waking a pool thread: ~27 context switches per check); xgate's own
check was ~12% of it. Parsing one short request here costs a few tens of microseconds, on the event loop.

Checks run on the service's event loop: an `@inline` policy (or one proven pure, see pure.py) is called right there
(so it must be quick: it holds the loop, as it holds a thread on the gRPC path), async ones are awaited in a task,
plain ones run in the policy pool, their answers coming back to the loop in batches (pool.py), without a task.
A malformed request gets 400 and the connection is closed; this port is for Envoy alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from types import MappingProxyType
from typing import Any

from xgate.authz.policy import Allow, Decision, Deny, LoadedPolicy, Request
from xgate.authz.runner import Outcome, PolicyRunner, Verdict
from xgate.plugins.policy import (
    HTTP_CLAIMS_HEADER,
    HTTP_LENGTH_HEADER,
    HTTP_POLICY_HEADER,
    HTTP_ROUTE_HEADER,
    HTTP_SOURCE_HEADER,
)

log = logging.getLogger("xgate.authz")

_MAX_HEAD = 64 * 1024  # Envoy's default limit for request headers is 60 KiB
_MAX_EXACT = 2**53
_CACHED = 10_000  # decisions of cacheable policies kept per process
# Added by Envoy's HTTP client to the check itself, not the client's request: the gRPC path does not show them.
_NOT_THE_CLIENTS = frozenset({"content-length", "x-envoy-expected-rq-timeout-ms", "x-envoy-internal"})
_REASONS = {200: "OK", 400: "Bad Request"}

Lookup = Callable[[str], LoadedPolicy | None]
Count = Callable[[str, Outcome], None]
Reply = Callable[[bytes], None]


def _number(text: str) -> int | float:
    """JSON integers as the gRPC path sees them: exact up to 2**53, doubles beyond (Struct keeps doubles)."""
    value = int(text)
    return value if abs(value) <= _MAX_EXACT else float(value)


_CLAIMS = json.JSONDecoder(parse_int=_number)  # one decoder: json.loads with an option builds one per call


class HttpChecks:
    """What the protocol needs of the service: the policies, the runner, the counters, the failure answer."""

    def __init__(
        self,
        lookup: Lookup,
        runner: PolicyRunner,
        count: Count,
        closed: Deny,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup, self.runner, self.count, self.closed, self.clock = lookup, runner, count, closed, clock
        # Decisions of `cacheable` policies: (policy, path, generation, route, method, claims) -> (expires,
        # outcome, answer); the claims as Envoy sent them (the same token gives the same text).
        self._cache: dict[tuple[str, str, int, str, str, str | None], tuple[float, Outcome, bytes]] = {}

    def answer(self, method: str, target: str, headers: dict[str, str], reply: Reply) -> bytes | None:
        """The response to one check: at once for an inline policy (no task, no turn of the loop), else None
        and `reply(response)` later, on the loop."""
        name = headers.pop(HTTP_POLICY_HEADER, "")
        route = headers.pop(HTTP_ROUTE_HEADER, "")
        source = headers.pop(HTTP_SOURCE_HEADER, "")
        claims_text = headers.pop(HTTP_CLAIMS_HEADER, None)
        if (length := headers.pop(HTTP_LENGTH_HEADER, None)) is not None:
            headers["content-length"] = length
        policy = self.lookup(name)
        if policy is None:
            self.count(name or "(none)", "errors")
            log.error("route %s: unknown policy %r (HTTP check); denying", route or "(unnamed)", name)
            return _response(self.closed)
        key = (name, policy.path, policy.generation, route, method, claims_text) if policy.cache_seconds else None
        if key is not None and (kept := self._cache.get(key)) is not None:
            if kept[0] > self.clock():
                self.count(name, kept[1])
                return kept[2]
            del self._cache[key]
        try:
            claims = _CLAIMS.decode(claims_text) if claims_text else {}
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            self.count(name, "errors")
            log.error("route %s: the verified claims Envoy sent are not a JSON object; denying", route)
            return _response(self.closed)
        request = Request(method, target, MappingProxyType(headers), source, route)
        mode = self.runner.place(policy)
        if mode == "inline":
            return self._counted(policy, key, self.runner.run_here(policy, request, claims))
        if mode == "thread":
            self.runner.run_later(policy, request, claims, lambda verdict: reply(self._counted(policy, key, verdict)))
            return None
        task = asyncio.ensure_future(self.runner.run_on_loop(policy, request, claims))
        task.add_done_callback(partial(self._awaited, policy, key, reply))
        return None

    def _awaited(self, policy: LoadedPolicy, key: Any, reply: Reply, task: asyncio.Future[Verdict]) -> None:
        if task.cancelled() or task.exception() is not None:  # run_on_loop does not raise: the loop is closing
            log.error("HTTP check failed: %r; denying", None if task.cancelled() else task.exception())
            reply(_response(self.closed))
            return
        reply(self._counted(policy, key, task.result()))

    def _counted(self, policy: LoadedPolicy, key: Any, verdict: Verdict) -> bytes:
        self.count(policy.name, verdict.outcome)
        answer = _response(verdict.decision)
        if key is not None and verdict.outcome in ("allowed", "denied"):  # never a failure answer
            if len(self._cache) >= _CACHED:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[key] = (self.clock() + policy.cache_seconds, verdict.outcome, answer)
        return answer


def _response(decision: Decision) -> bytes:
    if isinstance(decision, Allow):
        lines = [f"{name}: {value}\r\n" for name, value in decision.headers.items()]
        return ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n" + "".join(lines) + "\r\n").encode("latin-1")
    body = decision.body.encode()
    head = [f"HTTP/1.1 {decision.status} {_REASONS.get(decision.status, 'Denied')}\r\n"]
    head.append(f"content-length: {len(body)}\r\n")
    head += [f"{name}: {value}\r\n" for name, value in decision.headers.items()]
    return ("".join(head) + "\r\n").encode("latin-1") + body


_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class CheckProtocol(asyncio.Protocol):
    """One connection from Envoy: requests in order, one answered before the next is read (Envoy's HTTP/1.1
    client does not pipeline; if it did, they would wait in the buffer)."""

    def __init__(self, checks: HttpChecks) -> None:
        self._checks = checks
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False
        self._reply = self._answered  # one bound method per connection, not per check

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        while self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    self._refuse()
                return
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            parsed = _parse(head)
            if parsed is None:
                self._refuse()
                return
            answer = self._checks.answer(*parsed, self._reply)  # a later reply comes on a later turn of the loop
            if answer is None:
                self._busy = True
                return
            self._transport.write(answer)

    def _answered(self, answer: bytes) -> None:
        self._busy = False
        if self._transport is None:
            return
        self._transport.write(answer)
        self._next()

    def _refuse(self) -> None:
        if self._transport is not None:
            self._transport.write(_BAD)
            self._transport.close()


def _parse(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    """(method, target, headers with lower-case names, repeated ones joined with ",") of a request head, or None
    when it is not a well-formed HTTP/1.1 request without a body."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1" or not parts[1].startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or "\n" in line or "\r" in line:
            return None
        key = name.lower()
        value = value.strip(" \t")
        if key == "transfer-encoding" or (key == "content-length" and value != "0"):
            return None  # a body: Envoy sends none unless with_request_body is set, which xgate never does
        if key in _NOT_THE_CLIENTS:
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    # The pseudo-headers the gRPC check shows a policy (Envoy's HCM always sets x-forwarded-proto).
    if "host" in headers:
        headers[":authority"] = headers.pop("host")
    headers.update({":method": parts[0], ":path": parts[1], ":scheme": headers.get("x-forwarded-proto", "http")})
    return parts[0], parts[1], headers
