"""The demo upstream's gRPC mode: an echo service (unary, server streaming, bidi) and grpc.health.v1.

Messages are google.protobuf.StringValue, so any client can call it without our protos:
`/xgate.demo.v1.Echo/Unary`, `/xgate.demo.v1.Echo/ServerStream`, `/xgate.demo.v1.Echo/Bidi`. Answers start
with the upstream's name (`demo-grpc:hello`). A few texts ask for behaviours that tests and demos need:

    deadline          the seconds left of the call's deadline as the server sees it ("none" without one)
    metadata          the call's metadata (request headers) as JSON
    fail:<n>:<key>    the first <n> calls with this key end UNAVAILABLE, later ones succeed (retries)
    status:<code>     the call ends with that gRPC status code (a number)
    sleep:<ms>        answers after that many milliseconds (at most 60 s)
    <n>:<word>        ServerStream: <n> messages "<name>:<word>:<i>"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "xgate.demo.v1.Echo"
_MAX_SLEEP_MS = 60_000
_MAX_STREAM = 10_000


class EchoService:
    """The echo service's behaviour; `failures` counts the calls of each `fail:` key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failures: Counter[str] = Counter()

    async def unary(
        self, request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext
    ) -> wrappers_pb2.StringValue:
        answer = await self._answer(request.value, context)  # no headers before it: a failure is trailers-only
        await context.send_initial_metadata((("x-upstream", self.name),))
        return wrappers_pb2.StringValue(value=answer)

    async def server_stream(
        self, request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[wrappers_pb2.StringValue]:
        await context.send_initial_metadata((("x-upstream", self.name),))
        count, _, word = request.value.partition(":")
        total = min(int(count), _MAX_STREAM) if count.isdigit() else 1
        for index in range(total):
            yield wrappers_pb2.StringValue(value=f"{self.name}:{word or request.value}:{index}")

    async def bidi(
        self, requests: AsyncIterator[wrappers_pb2.StringValue], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[wrappers_pb2.StringValue]:
        await context.send_initial_metadata((("x-upstream", self.name),))
        async for request in requests:
            yield wrappers_pb2.StringValue(value=await self._answer(request.value, context))

    async def _answer(self, text: str, context: grpc.aio.ServicerContext) -> str:
        kind, _, rest = text.partition(":")
        if text == "deadline":
            left = context.time_remaining()
            return f"{self.name}:deadline:{'none' if left is None else f'{left:.3f}'}"
        if text == "metadata":
            return json.dumps({key: value for key, value in context.invocation_metadata() or ()}, sort_keys=True)
        if kind == "fail":
            count, _, key = rest.partition(":")
            self.failures[key] += 1
            if count.isdigit() and self.failures[key] <= int(count):
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"failing call {self.failures[key]} of {key}")
            return f"{self.name}:{key}:after {self.failures[key]} calls"
        if kind == "status" and rest.isdigit():
            await context.abort(grpc.StatusCode(_code(int(rest))), f"asked for status {rest}")
        if kind == "sleep" and rest.isdigit():
            await asyncio.sleep(min(int(rest), _MAX_SLEEP_MS) / 1000)
        return f"{self.name}:{text}"


def _code(number: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.value  # type: ignore[no-any-return]
    return grpc.StatusCode.UNKNOWN.value  # type: ignore[no-any-return]


def echo_handlers(service: EchoService) -> grpc.GenericRpcHandler:
    """The echo service's methods, for a grpc server of your own (e.g. one over TLS)."""
    decode, encode = wrappers_pb2.StringValue.FromString, wrappers_pb2.StringValue.SerializeToString
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(service.unary, decode, encode),
            "ServerStream": grpc.unary_stream_rpc_method_handler(service.server_stream, decode, encode),
            "Bidi": grpc.stream_stream_rpc_method_handler(service.bidi, decode, encode),
        },
    )


@dataclass
class GrpcUpstream:
    """A running gRPC demo upstream; `stop()` ends it."""

    name: str
    host: str
    port: int
    service: EchoService
    health: health.aio.HealthServicer
    _server: grpc.aio.Server

    async def set_serving(self, serving: bool) -> None:
        """What grpc.health.v1 answers, for the whole server and for the echo service."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def stop(self) -> None:
        await self._server.stop(grace=0.5)


async def start_grpc_upstream(name: str, host: str = "127.0.0.1", port: int = 0) -> GrpcUpstream:
    """Start the gRPC echo upstream on host:port (0 picks a free port), serving grpc.health.v1 too.

    Errors: OSError when the address cannot be bound.
    Resources: the caller must `await upstream.stop()`.
    """
    service = EchoService(name)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((echo_handlers(service),))
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    upstream = GrpcUpstream(name, host, bound, service, checks, server)
    await upstream.set_serving(True)
    return upstream


async def _serve_until_signal(name: str, host: str, port: int) -> None:
    upstream = await start_grpc_upstream(name, host, port)
    print(f"demo upstream {name} (gRPC) listening on {host}:{upstream.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await upstream.stop()


def run_grpc_upstream(name: str, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run the gRPC echo upstream in the foreground until SIGINT or SIGTERM (`xgate demo-upstream --grpc`)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signal(name, host, port))
