"""The HTTP transport's server (xgate.authz.http) as Envoy's HTTP ext_authz client talks to it: kept-alive
requests in order, answers for each kind of policy, and what it refuses."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from xgate.authz import Allow, Deny, Request, cacheable, inline
from xgate.authz.http import CheckProtocol, HttpChecks, _parse
from xgate.authz.policy import LoadedPolicy, _mode
from xgate.authz.runner import PolicyRunner

SEEN: list[tuple[Request, dict[str, Any]]] = []


@inline
def quick(request: Request, claims: dict[str, Any]) -> Allow | Deny:
    SEEN.append((request, claims))
    if claims.get("admin") is True:
        return Allow(headers={"x-user": str(claims.get("sub"))})
    return Deny(451, body="nope", headers={"x-why": "quick"})


def slow(request: Request, claims: dict[str, Any]) -> Allow:
    return Allow(headers={"x-ran": "pool"})


async def waits(request: Request, claims: dict[str, Any]) -> Allow:
    await asyncio.sleep(0.01)
    return Allow(headers={"x-ran": "loop"})


def broken(request: Request, claims: dict[str, Any]) -> Allow:
    raise RuntimeError("bug")


CALLS: list[dict[str, Any]] = []


@cacheable(5)
def remembered(request: Request, claims: dict[str, Any]) -> Allow | Deny:
    CALLS.append(claims)
    return Allow(headers={"x-call": str(len(CALLS))}) if claims.get("ok") else Deny(403)


POLICIES = {
    name: LoadedPolicy(name, f"tests:{name}", call, _mode(call))
    for name, call in {"quick": quick, "slow": slow, "waits": waits, "broken": broken}.items()
}
POLICIES["remembered"] = LoadedPolicy("remembered", "tests:remembered", remembered, "thread", cache_seconds=5.0)


NOW = [1000.0]  # the clock of the decision cache


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, Counter[tuple[str, str]]]]:
    counts: Counter[tuple[str, str]] = Counter()
    runner = PolicyRunner(timeout=0.5)
    count = lambda name, outcome: counts.update([(name, outcome)])  # noqa: E731
    checks = HttpChecks(POLICIES.get, runner, count, Deny(403), clock=lambda: NOW[0])
    listening = await asyncio.get_running_loop().create_server(lambda: CheckProtocol(checks), "127.0.0.1", 0)
    try:
        yield listening.sockets[0].getsockname()[1], counts
    finally:
        listening.close()
        runner.close()


def check(policy: str, claims: dict[str, Any] | None = None, target: str = "/a?b=1", extra: str = "") -> bytes:
    head = f"GET {target} HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 0\r\nx-m: a\r\nx-m: b\r\n"
    head += "x-forwarded-proto: http\r\nx-envoy-internal: true\r\nx-envoy-expected-rq-timeout-ms: 200\r\n"
    head += f"x-xgate-policy: {policy}\r\nx-xgate-route: r1\r\nx-xgate-source: 10.0.0.7\r\n{extra}"
    if claims is not None:
        head += f"x-xgate-claims: {json.dumps(claims)}\r\n"
    return (head + "\r\n").encode()


async def exchange(port: int, *requests: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        writer.write(b"".join(requests))  # all at once: they are answered in order
        for _ in requests:
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            answers.append((int(status_line.split()[1]), headers, body))
    finally:
        writer.close()
    return answers


async def test_checks_are_answered_in_order_for_each_kind_of_policy(
    server: tuple[int, Counter[tuple[str, str]]],
) -> None:
    port, counts = server
    SEEN.clear()
    answers = await exchange(
        port,
        check("quick", {"admin": True, "sub": "ada", "n": 3, "big": 2**60}),
        check("slow"),
        check("quick", {"admin": 1}),
        check("waits"),
        check("broken"),
        check("unknown"),
    )
    assert [status for status, _, _ in answers] == [200, 200, 451, 200, 403, 403]
    assert answers[0][1]["x-user"] == "ada" and answers[0][1]["content-length"] == "0"
    assert answers[1][1]["x-ran"] == "pool" and answers[3][1]["x-ran"] == "loop"
    assert (answers[2][1]["x-why"], answers[2][2]) == ("quick", b"nope")
    request, claims = SEEN[0]
    assert claims == {"admin": True, "sub": "ada", "n": 3, "big": float(2**60)}  # as Struct has them: doubles
    assert (request.method, request.path, request.source, request.route) == ("GET", "/a?b=1", "10.0.0.7", "r1")
    assert dict(request.headers) == {
        ":authority": "gw.test", ":method": "GET", ":path": "/a?b=1", ":scheme": "http",
        "x-m": "a,b", "x-forwarded-proto": "http",
    }  # fmt: skip
    assert counts == Counter(
        {("quick", "allowed"): 1, ("quick", "denied"): 1, ("slow", "allowed"): 1, ("waits", "allowed"): 1,
         ("broken", "errors"): 1, ("unknown", "errors"): 1}
    )  # fmt: skip


async def test_claims_that_are_not_a_json_object_deny(server: tuple[int, Counter[tuple[str, str]]]) -> None:
    port, counts = server
    answers = await exchange(port, check("quick", extra="x-xgate-claims: [1]\r\n"), check("quick", None, "/x"))
    assert [status for status, _, _ in answers] == [403, 451]
    assert counts[("quick", "errors")] == 1


@pytest.mark.parametrize(
    "head",
    [
        b"GET /a HTTP/1.0\r\n\r\n",
        b"GET a HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nno-colon\r\n\r\n",
        b"GET /a HTTP/1.1\r\n bad: x\r\n\r\n",
        b"POST /a HTTP/1.1\r\ncontent-length: 4\r\n\r\nbody",
        b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
)
async def test_malformed_requests_get_400_and_the_connection_closes(
    server: tuple[int, Counter[tuple[str, str]]], head: bytes
) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    answer = await asyncio.wait_for(reader.read(), 5)  # read to EOF: the server closed
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_parse_keeps_the_clients_headers_only() -> None:
    parsed = _parse(b"GET /p HTTP/1.1\r\nHost: h\r\nX-Envoy-Internal: true\r\nContent-Length: 0\r\nA: 1")
    assert parsed == ("GET", "/p", {":authority": "h", "a": "1", ":method": "GET", ":path": "/p", ":scheme": "http"})


async def test_a_cacheable_policys_decisions_are_reused_until_they_expire(
    server: tuple[int, Counter[tuple[str, str]]],
) -> None:
    port, counts = server
    CALLS.clear()
    ok, other = {"ok": True, "sub": "a"}, {"ok": True, "sub": "b"}
    first = await exchange(port, check("remembered", ok), check("remembered", ok), check("remembered", other))
    assert [(status, headers.get("x-call")) for status, headers, _ in first] == [(200, "1"), (200, "1"), (200, "2")]
    denied = await exchange(port, check("remembered", {}), check("remembered", {}), check("remembered", ok, "/b"))
    assert [status for status, _, _ in denied] == [403, 403, 200]
    assert len(CALLS) == 3  # {} once; the same token on another path of the same route reused its decision
    NOW[0] += 5.1
    again = await exchange(port, check("remembered", ok))
    assert again[0][1]["x-call"] == "4" and len(CALLS) == 4  # expired: asked again
    assert counts[("remembered", "allowed")] == 5 and counts[("remembered", "denied")] == 2  # every answer counted
