"""gRPC and TCP active health checks, and the timeouts of listeners and routes, against real servers through a
real Envoy (issue 15): a gRPC service that says NOT_SERVING (grpc.health.v1) and a port that stops accepting
are taken out of the balancing and brought back; an idle client connection is closed; a stream that outlives
max_stream_duration is ended."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from xgate.proxy.process import EnvoyProcess
from xgate.testing import free_port, run_gateway, run_nginx
from xgate.testing.faults import counters, endpoint_health
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration

SERVICE = "users.v1.Users"


async def _flags(envoy: EnvoyProcess, cluster: str, address: str) -> set[str]:
    return (await endpoint_health(envoy, cluster)).get(address, {"missing"})


async def test_grpc_and_tcp_health_checks_take_endpoints_out_and_back(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        health = HealthServicer()
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stack.push_async_callback(server.stop, None)
        await health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        tcp = await stack.enter_async_context(run_nginx(tmp_path, "tcp"))
        port = free_port()
        config = f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - name: grpc
    endpoints: ["127.0.0.1:{grpc_port}"]
    protocol: http2
    health_check: {{type: grpc, service: {SERVICE}, interval: 200ms, unhealthy_threshold: 1}}
  - {{name: tcp, endpoints: ["{tcp.address}"], health_check: {{type: tcp, interval: 200ms, unhealthy_threshold: 1}}}}
routes:
  - {{name: grpc, match: {{path: {{prefix: /grpc.health.v1.Health/}}}}, upstream: grpc}}
  - {{name: tcp, upstream: tcp}}
"""
        gateway = await stack.enter_async_context(run_gateway(config, tmp_path / "gw"))
        envoy = gateway.envoys[0]
        grpc_address = f"127.0.0.1:{grpc_port}"

        async def grpc_is(flags: set[str]) -> bool:
            return await _flags(envoy, "upstream/grpc", grpc_address) == flags

        async def tcp_is(flags: set[str]) -> bool:
            return await _flags(envoy, "upstream/tcp", tcp.address) == flags

        await wait_for(lambda: grpc_is(set()), 10, "the gRPC endpoint healthy")
        await wait_for(lambda: tcp_is(set()), 10, "the TCP endpoint healthy")
        # The gRPC check goes through Envoy as a client would too: the service answers SERVING.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

        await health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await wait_for(lambda: grpc_is({"failed_active_health_check"}), 10, "NOT_SERVING to fail the check")
        await health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await wait_for(lambda: grpc_is(set()), 10, "SERVING to pass it again")

        await tcp.stop()
        await wait_for(lambda: tcp_is({"failed_active_health_check"}), 10, "a closed port to fail the TCP check")
        await tcp.start()
        await wait_for(lambda: tcp_is(set()), 10, "the port open again to pass it")


async def test_idle_connections_are_closed_and_long_streams_ended(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        slow = await stack.enter_async_context(run_nginx(tmp_path, "slow"))
        port = free_port()
        config = f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}, idle_timeout: 300ms}}]
upstreams: [{{name: slow, endpoints: ["{slow.address}"]}}]
routes:
  - {{name: slow, upstream: slow, timeout: 30s, max_stream_duration: 400ms, retries: null}}
"""
        gateway = await stack.enter_async_context(run_gateway(config, tmp_path / "gw"))
        loop = asyncio.get_running_loop()

        # A keep-alive connection left idle is closed by Envoy after the listener's idle_timeout: Envoy then
        # drains it (drain_timeout, 5 s, and a delayed close of 1 s) before the socket closes.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        idle_from = loop.time()
        rest = await asyncio.wait_for(reader.read(), 15)  # the body, then EOF when Envoy closes
        closed_after = loop.time() - idle_from
        writer.close()
        assert rest.endswith(b"slow\n")
        stats = await counters(gateway.envoys[0], "http.public.downstream_cx_idle_timeout")

        # A request to a hung upstream ends after max_stream_duration, not the route's 30 s timeout.
        slow.freeze()
        started = loop.time()
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(f"http://127.0.0.1:{port}/")
        ended_after = loop.time() - started
        slow.thaw()
        print(f"\nidle connection closed after {closed_after:.2f} s; stream ended after {ended_after:.2f} s")
        assert stats == {"http.public.downstream_cx_idle_timeout": 1}
        assert 0.25 <= closed_after <= 12.0
        assert answer.status_code == 504
        assert 0.35 <= ended_after <= 3.0
