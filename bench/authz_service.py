"""Benchmark: Check calls per second and latency of the authz service with a trivial allow policy, next to a bare
grpc.aio Authorization handler.

Run from the repository: `.venv/bin/python bench/authz_service.py [--seconds 5] [--calls 20000]
[--concurrency 32] [--json]`.

The service runs in a child process (this file with the hidden `--serve` flag) so that it has a core of its
own; this process is the gRPC client: `concurrency` callers on one channel sending the same CheckRequest (a
route's context_extensions, six headers, a seven-claim jwt_authn payload in metadata_context) until `calls`
calls or `seconds` seconds, whichever comes first, after 500 warm-up calls. "per core" divides the calls by the
CPU seconds the service process used (from /proc).

Rows: `grpc-bare` answers OK at once (the grpc.aio ceiling on this machine), `grpc-sync` the same on grpcio's
thread-pool server (the ceiling a synchronous service would have); `inline`, `async` and `thread` are
the service with the same allow policy run each way (an `@inline` function, an `async def`, a plain function
in the thread pool); `*/direct` call the servicer's `check` in this process without gRPC, each call in a
thread as the server's threads make it: xgate's own cost plus that hop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as auth_v3
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from google.protobuf import struct_pb2

from _service_load import cpu_seconds, drive, latency_ms, print_table, serve_bare, serve_started, start_child
from xgate.authz import Allow, AuthorizationService, PolicyRegistry, Request, inline, serve
from xgate.plugins.jwt import JWT_FILTER, PAYLOAD_METADATA
from xgate.plugins.policy import POLICY_KEY, ROUTE_KEY
from xgate.supervisor import terminate

MODES = ("inline", "async", "thread")


# -- the policies (loaded by the child as "__main__:<name>") ------------------------------------------------


@inline
def allow_inline(request: Request, claims: dict[str, Any]) -> Allow:
    return Allow()


async def allow_async(request: Request, claims: dict[str, Any]) -> Allow:
    return Allow()


def allow_thread(request: Request, claims: dict[str, Any]) -> Allow:
    return Allow()


def registry(module: str) -> PolicyRegistry:
    policies = PolicyRegistry()
    errors = policies.load({mode: f"{module}:allow_{mode}" for mode in MODES})
    if errors:
        raise SystemExit(f"policies failed to load: {errors}")
    return policies


# -- the service child --------------------------------------------------------------------------------------


class BareService(auth_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: auth_v3.CheckRequest, context: grpc.aio.ServicerContext) -> auth_v3.CheckResponse:
        return auth_v3.CheckResponse(ok_response=auth_v3.OkHttpResponse())


class SyncBareService(auth_grpc.AuthorizationServicer):  # type: ignore[misc]
    def Check(self, request: auth_v3.CheckRequest, context: grpc.ServicerContext) -> auth_v3.CheckResponse:
        return auth_v3.CheckResponse(ok_response=auth_v3.OkHttpResponse())


def serve_sync_bare() -> None:
    """Child: grpcio's thread-pool server answering OK at once (4 workers), for comparison with grpc.aio."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    auth_grpc.add_AuthorizationServicer_to_server(SyncBareService(), server)
    print(f"port {server.add_insecure_port('127.0.0.1:0')}", flush=True)
    server.start()
    server.wait_for_termination()


async def serve_child(kind: str) -> None:
    if kind == "grpc-bare":
        await serve_bare(lambda server: auth_grpc.add_AuthorizationServicer_to_server(BareService(), server))
        return
    await serve_started(*await serve(registry("__main__")))


# -- the client ---------------------------------------------------------------------------------------------


def check_request(policy: str) -> auth_v3.CheckRequest:
    request = auth_v3.CheckRequest()
    attributes = request.attributes
    attributes.context_extensions[POLICY_KEY] = policy
    attributes.context_extensions[ROUTE_KEY] = "bench-route"
    attributes.source.address.socket_address.address = "127.0.0.1"
    http = attributes.request.http
    http.method, http.path = "GET", "/orders/42"
    http.headers.update(
        {
            ":authority": "api.example.com", ":method": "GET", ":path": "/orders/42", ":scheme": "http",
            "user-agent": "wrk", "authorization": "Bearer " + "x" * 300,
        }
    )  # fmt: skip
    payload = struct_pb2.Struct()
    payload.update(
        {
            "iss": "https://issuer.example.com", "sub": "user-42", "aud": "api", "exp": 2_000_000_000,
            "iat": 1_700_000_000, "roles": ["admin", "dev"], "tenant": "acme",
        }
    )  # fmt: skip
    attributes.metadata_context.filter_metadata[JWT_FILTER].fields[PAYLOAD_METADATA].struct_value.CopyFrom(payload)
    return request


def row(name: str, latencies: list[float], refused: int, wall: float, cpu: float) -> dict[str, Any]:
    done = len(latencies)
    return {
        "service": name,
        "calls": done,
        "refused": refused,
        "seconds": round(wall, 3),
        "calls_per_s": round(done / wall),
        "service_cpu_s": round(cpu, 2),
        "per_service_core": round(done / cpu) if cpu else None,
        **latency_ms(latencies),
    }


async def measure(kind: str, policy: str, args: argparse.Namespace) -> dict[str, Any]:
    proc, port = await start_child(__file__, kind)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = auth_grpc.AuthorizationStub(channel)
            cpu_before = cpu_seconds(proc.pid)
            latencies, refused, wall = await drive(
                lambda request: stub.Check(request, timeout=5),
                [check_request(policy)],
                _refused,
                args.calls,
                args.seconds,
                args.concurrency,
            )
            cpu = cpu_seconds(proc.pid) - cpu_before
    finally:
        await terminate(proc, 5)
    return row(kind if kind.startswith("grpc-") else policy, latencies, refused, wall, cpu)


async def measure_direct(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    service = AuthorizationService(registry(__name__))
    service.loop = asyncio.get_running_loop()  # for the async policy, as serve() sets it

    async def check(request: auth_v3.CheckRequest) -> auth_v3.CheckResponse:
        return await asyncio.to_thread(service.check, request)  # in a thread, as the server's threads call it

    try:
        cpu_before = time.process_time()
        latencies, refused, wall = await drive(
            check, [check_request(policy)], _refused, args.calls, args.seconds, args.concurrency
        )
        cpu = time.process_time() - cpu_before
    finally:
        service.close()
    return row(f"{policy}/direct", latencies, refused, wall, cpu)


def _refused(answer: auth_v3.CheckResponse) -> bool:
    return not answer.HasField("ok_response")


def report(rows: list[dict[str, Any]]) -> None:
    columns = [
        ("service", "service"),
        ("calls", "calls"),
        ("calls_per_s", "calls/s"),
        ("per_service_core", "per service core"),
        ("service_cpu_s", "service CPU s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("refused", "refused"),
    ]
    print_table(rows, columns)


async def main(args: argparse.Namespace) -> int:
    rows = [await measure("grpc-bare", "inline", args), await measure("grpc-sync", "inline", args)]
    rows += [await measure("xgate", mode, args) for mode in MODES]
    rows += [await measure_direct(mode, args) for mode in MODES]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"concurrency {args.concurrency}, at most {args.calls} calls or {args.seconds} s per row")
        report(rows)
    return 0 if all(row["refused"] == 0 for row in rows) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # child: "grpc-bare", "grpc-sync" or "xgate"
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        if arguments.serve == "grpc-sync":
            serve_sync_bare()
        else:
            asyncio.run(serve_child(arguments.serve))
    else:
        sys.exit(asyncio.run(main(arguments)))
