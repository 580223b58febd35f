"""The three services' gRPC servers: garbage bytes get one WARNING line and INVALID_ARGUMENT (no traceback), the
service keeps answering, and a taken port is refused unless sharing it was asked for."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as auth_v3
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_v3
from envoy.service.ratelimit.v3 import rls_pb2 as rls_v3

from xgate.authz import PolicyRegistry
from xgate.authz import serve as serve_authz
from xgate.dyeing import DyerRegistry
from xgate.dyeing import serve as serve_dyeing
from xgate.errors import PortInUseError
from xgate.ratelimit import LimitTable
from xgate.ratelimit import serve as serve_ratelimit

GARBAGE = b"\xff\xff\xff\xff\x07"
CHECK = "/envoy.service.auth.v3.Authorization/Check"
PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
SHOULD_RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


@asynccontextmanager
async def authz(port: int = 0, reuse_port: bool = False) -> AsyncIterator[int]:
    server, bound = await serve_authz(PolicyRegistry(), port=port, reuse_port=reuse_port)
    try:
        yield bound
    finally:
        await server.stop(0)


@asynccontextmanager
async def dyeing(port: int = 0, reuse_port: bool = False) -> AsyncIterator[int]:
    server = await serve_dyeing(DyerRegistry(), port=port, reuse_port=reuse_port)
    try:
        yield server.port
    finally:
        await server.stop(0)


@asynccontextmanager
async def ratelimit(port: int = 0, reuse_port: bool = False) -> AsyncIterator[int]:
    server, bound = await serve_ratelimit(LimitTable(), port=port, reuse_port=reuse_port)
    try:
        yield bound
    finally:
        await server.stop(0)


Service = Callable[..., Any]
# (channel, raw request bytes) -> the raw response bytes of one call
Call = Callable[[grpc.aio.Channel, bytes], Awaitable[bytes]]


async def unary(path: str, channel: grpc.aio.Channel, request: bytes) -> bytes:
    answer: bytes = await channel.unary_unary(path)(request, timeout=10)
    return answer


async def stream(path: str, channel: grpc.aio.Channel, request: bytes) -> bytes:
    call = channel.stream_stream(path)(iter([request]), timeout=10)
    async for answer in call:
        call.cancel()
        assert isinstance(answer, bytes)
        return answer
    raise AssertionError("no answer")


CASES = [
    pytest.param(authz, CHECK, unary, auth_v3.CheckRequest(), auth_v3.CheckResponse, id="authz"),
    pytest.param(
        dyeing,
        PROCESS,
        stream,
        ext_proc_v3.ProcessingRequest(request_headers=ext_proc_v3.HttpHeaders()),
        ext_proc_v3.ProcessingResponse,
        id="dyeing",
    ),
    pytest.param(
        ratelimit,
        SHOULD_RATE_LIMIT,
        unary,
        rls_v3.RateLimitRequest(domain="d"),
        rls_v3.RateLimitResponse,
        id="ratelimit",
    ),
]


@pytest.mark.parametrize(("service", "path", "kind", "valid", "answer_type"), CASES)
async def test_garbage_is_one_warning_line_and_invalid_argument(
    service: Service, path: str, kind: Any, valid: Any, answer_type: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with service() as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await kind(path, channel, GARBAGE)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed request" in str(refused.value.details())
        records = [r for r in caplog.records if r.levelno >= logging.WARNING]
        # The service is unharmed: a well-formed request right after is answered.
        answer = answer_type.FromString(await kind(path, channel, valid.SerializeToString()))
        assert isinstance(answer, answer_type)
    assert [r.levelname for r in records] == ["WARNING"] * 3, [r.getMessage() for r in records]
    for record in records:
        message = record.getMessage()
        assert record.exc_info is None and "\n" not in message
        assert path in message and "from ipv4:127.0.0.1:" in message and "Wire format was corrupt" in message, message


@pytest.mark.parametrize("service", [authz, dyeing, ratelimit], ids=["authz", "dyeing", "ratelimit"])
async def test_a_taken_port_is_refused_unless_sharing_is_asked_for(service: Service) -> None:
    async with service() as port:
        with pytest.raises(PortInUseError, match=rf"127\.0\.0\.1:{port} \(\w+ gRPC, --listen\) is in use by pid \d+"):
            async with service(port):
                pass
    async with service(reuse_port=True) as port, service(port, reuse_port=True) as second:
        assert second == port
