"""gRPC through a real Envoy: grpcio clients -> xgate -> Python gRPC servers (the demo upstream's gRPC mode)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2

from xgate.demo.grpc import SERVICE, GrpcUpstream, start_grpc_upstream
from xgate.testing import Gateway, free_port, run_gateway

pytestmark = pytest.mark.integration

METHOD = f"/{SERVICE}/"
CAP = 2.0  # the echo route's max_timeout


def config(port: int, g1: int, g2: int) -> str:
    return f"""
listeners:
  - {{name: grpc, address: 127.0.0.1, port: {port}}}
upstreams:
  - {{name: g1, endpoints: ["127.0.0.1:{g1}"], protocol: http2}}
  - {{name: g2, endpoints: ["127.0.0.1:{g2}"], protocol: http2}}
routes:
  - name: streams
    match: {{grpc: {{service: {SERVICE}, method: ServerStream}}}}
    upstream: g2
  - name: echo
    match: {{grpc: {{service: {SERVICE}}}}}
    upstream: g1
    retries: {{attempts: 2, retry_on: [reset]}}
    grpc: {{max_timeout: {CAP}s, retry_on: [unavailable]}}
"""


@pytest.fixture
async def servers() -> AsyncIterator[tuple[GrpcUpstream, GrpcUpstream]]:
    g1, g2 = await start_grpc_upstream("g1"), await start_grpc_upstream("g2")
    try:
        yield g1, g2
    finally:
        await g1.stop()
        await g2.stop()


@pytest.fixture
async def gateway(servers: tuple[GrpcUpstream, GrpcUpstream], work_dir: Path) -> AsyncIterator[tuple[Gateway, int]]:
    port = free_port()
    async with run_gateway(config(port, servers[0].port, servers[1].port), work_dir) as running:
        yield running, port


def _calls(channel: grpc.aio.Channel) -> tuple[grpc.aio.UnaryUnaryMultiCallable, ...]:
    decode, encode = wrappers_pb2.StringValue.FromString, wrappers_pb2.StringValue.SerializeToString
    return (
        channel.unary_unary(METHOD + "Unary", request_serializer=encode, response_deserializer=decode),
        channel.unary_stream(METHOD + "ServerStream", request_serializer=encode, response_deserializer=decode),
        channel.stream_stream(METHOD + "Bidi", request_serializer=encode, response_deserializer=decode),
    )


def _text(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)


async def test_unary_streaming_and_bidi_reach_the_method_matched_upstream(gateway: tuple[Gateway, int]) -> None:
    _, port = gateway
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary, server_stream, bidi = _calls(channel)
        call = unary(_text("hello"), timeout=5)
        assert (await call).value == "g1:hello"
        assert dict(await call.initial_metadata())["x-upstream"] == "g1"
        # ServerStream has a route of its own, to g2; the other methods of the service go to g1.
        streamed = [message.value async for message in server_stream(_text("5:tick"), timeout=5)]
        assert streamed == [f"g2:tick:{index}" for index in range(5)]

        requests: asyncio.Queue[wrappers_pb2.StringValue | None] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[wrappers_pb2.StringValue]:
            while (item := await requests.get()) is not None:
                yield item

        stream = bidi(outgoing(), timeout=10)
        for word in ("a", "b", "c"):  # one at a time: each answer comes back while the stream stays open
            await requests.put(_text(word))
            assert (await stream.read()).value == f"g1:{word}"
        await requests.put(None)
        assert await stream.code() == grpc.StatusCode.OK


async def test_status_codes_and_messages_come_back(gateway: tuple[Gateway, int]) -> None:
    _, port = gateway
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary, _, _ = _calls(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await unary(_text("status:5"), timeout=5)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "asked for status 5"


async def test_the_deadline_reaches_the_server_and_is_capped(gateway: tuple[Gateway, int]) -> None:
    _, port = gateway
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary, _, _ = _calls(channel)
        answer = (await unary(_text("deadline"), timeout=1.5)).value
        left = float(answer.rpartition(":")[2])
        assert 0.5 < left <= 1.5, answer  # the client's deadline, less the way there
        # A call allowed 30 s reaches the server with the route's cap as its deadline (Envoy rewrites
        # grpc-timeout), and is cut there.
        answer = (await unary(_text("deadline"), timeout=30)).value
        assert 1.0 < float(answer.rpartition(":")[2]) <= CAP, answer
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await unary(_text("sleep:10000"), timeout=30)
        took = time.monotonic() - started
        assert failed.value.code() != grpc.StatusCode.OK
        assert CAP - 0.2 < took < CAP + 3, (took, failed.value)


async def test_a_grpc_status_code_is_retried(
    gateway: tuple[Gateway, int], servers: tuple[GrpcUpstream, GrpcUpstream]
) -> None:
    running, port = gateway
    g1, _ = servers
    before = await running.envoys[0].stat("cluster.upstream/g1.upstream_rq_retry")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary, _, _ = _calls(channel)
        # The first call of this key fails UNAVAILABLE: the route retries that code, so the client sees success.
        assert (await unary(_text("fail:1:once"), timeout=5)).value == "g1:once:after 2 calls"
        assert g1.service.failures["once"] == 2
        # More failures than retries: the code reaches the client.
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await unary(_text("fail:5:always"), timeout=5)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert g1.service.failures["always"] == 3  # the call and its 2 retries
    assert await running.envoys[0].stat("cluster.upstream/g1.upstream_rq_retry") - before == 3
