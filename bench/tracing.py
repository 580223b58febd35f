"""What tracing costs on the data path, through a real Envoy, in one run, measured with wrk (Debian package) on
loopback: the same route on three listeners of one Envoy, tracing off, sampling 1% and sampling 100%.

    .venv/bin/python bench/tracing.py [--seconds 5] [--connections 32] [--threads 1] [--rounds 2]

The upstream and the OTLP collector are a second Envoy: a direct response, and a gRPC sink that answers every
export at once (trailers-only, grpc-status 0), so the figures are the gateway's own work (making spans,
injecting `traceparent`, batching and sending OTLP), not a Python collector's. Listeners are measured
alternately, `--rounds` times each; the table shows each one's best rate with that run's p50 and p99, its share of
the untraced rate, and the spans the gateway sent during its runs per request (0, ~0.01, 1). The machine's floor
(bench/_stalls.py) is measured before and after, so the p99s can be read against it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import _stalls
from _wrk import have_wrk, wrk_parser, wrk_run
from xgate.proxy.process import EnvoyProcess
from xgate.testing import free_port, run_gateway

LISTENERS = {"off": None, "1%": 1, "100%": 100}  # the table's name -> sampling (None: no tracing)
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = {"name": "envoy.filters.http.router",
           "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}  # fmt: skip


def config(ports: dict[str, int], upstream: int, collector: int) -> str:
    listeners = []
    for index, (name, sampling) in enumerate(LISTENERS.items()):
        tracing = "false" if sampling is None else f'{{collector: "127.0.0.1:{collector}", sampling: {sampling}}}'
        listeners.append(
            f"  - {{name: l{index}, address: 127.0.0.1, port: {ports[name]}, plugins: {{tracing: {tracing}}}}}"
        )
    return (
        "listeners:\n" + "\n".join(listeners) + "\n"
        f'upstreams: [{{name: app, endpoints: ["127.0.0.1:{upstream}"]}}]\n'
        "routes: [{name: users, match: {path: {prefix: /users}}, upstream: app}]\n"
    )


def origin_bootstrap(upstream: int, collector: int) -> dict[str, Any]:
    """A static Envoy: the upstream (a direct response) and the OTLP sink (HTTP/2, trailers-only OK answers)."""

    def listener(name: str, port: int, route: dict[str, Any], http2: bool = False) -> dict[str, Any]:
        manager: dict[str, Any] = {
            "@type": _HCM,
            "stat_prefix": name,
            "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]},
            "http_filters": [_ROUTER],
        }
        if http2:
            manager["codec_type"] = "HTTP2"
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": manager}]}],
        }  # fmt: skip

    ok = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    grpc_ok = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200},
        "response_headers_to_add": [
            {"header": {"key": "content-type", "value": "application/grpc"}},
            {"header": {"key": "grpc-status", "value": "0"}},
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [listener("upstream", upstream, ok), listener("collector", collector, grpc_ok, http2=True)]
        },
    }


class Run(NamedTuple):
    rps: float
    p50: float  # ms
    p99: float  # ms
    spans_per_request: float


async def _counter(envoy: EnvoyProcess, name: str) -> int:
    _, body = await envoy.admin_get(f"/stats?filter=^{name}$")
    values = [int(line.split(": ")[1]) for line in body.splitlines() if ": " in line]
    return sum(values)


async def measure(port: int, gateway: EnvoyProcess, args: argparse.Namespace) -> Run:
    before = await _counter(gateway, "tracing\\.opentelemetry\\.spans_sent")
    result = await asyncio.to_thread(
        wrk_run, f"http://127.0.0.1:{port}/users", args.seconds, args.connections, args.threads
    )
    if result.errors:
        raise RuntimeError(f"wrk saw errors on port {port}:\n{result.output}")
    await asyncio.sleep(5.5)  # Envoy flushes what it holds every 5 s
    sent = await _counter(gateway, "tracing\\.opentelemetry\\.spans_sent") - before
    return Run(result.rps, result.p50_ms, result.p99_ms, sent / max(1.0, result.rps * args.seconds))


def table(results: dict[str, list[Run]]) -> str:
    best = {name: max(runs) for name, runs in results.items()}
    lines = [f"{'tracing':8} {'rps (each run)':>22} {'best rps':>9} {'p50 ms':>7} {'p99 ms':>7} {'of off':>7} "
             f"{'spans/request':>13}"]  # fmt: skip
    for name, runs in results.items():
        each = ", ".join(f"{run.rps:,.0f}" for run in runs)
        share = best[name].rps / best["off"].rps
        spans = max(run.spans_per_request for run in runs)
        lines.append(
            f"{name:8} {each:>22} {best[name].rps:>9,.0f} {best[name].p50:>7.2f} {best[name].p99:>7.2f} "
            f"{share:>7.1%} {spans:>13.3f}"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    if not have_wrk():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    ports = {name: free_port() for name in LISTENERS}
    upstream, collector = free_port(), free_port()
    results: dict[str, list[Run]] = {name: [] for name in LISTENERS}
    floor_before = await asyncio.to_thread(_stalls.measure, 2.0)
    with tempfile.TemporaryDirectory(prefix="xgate-bench-tracing-") as name:
        work = Path(name)
        with (work / "origin.log").open("wb") as origin_log:
            origin = EnvoyProcess(origin_bootstrap(upstream, collector), work / "origin", concurrency=1,
                                  output=origin_log)  # fmt: skip
            await origin.start()
            try:
                await origin.wait_ready(20)
                async with run_gateway(config(ports, upstream, collector), work / "gw") as gateway:
                    envoy = gateway.envoys[0]
                    for _ in range(args.rounds):
                        for listener, port in ports.items():
                            results[listener].append(await measure(port, envoy, args))
            finally:
                await origin.stop()
    floor_after = await asyncio.to_thread(_stalls.measure, 2.0)
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, Envoy --concurrency 1, "
        "upstream and OTLP collector: a second Envoy (direct responses)"
    )
    print(table(results))
    print(f"floor before: {_stalls.line(floor_before)}")
    print(f"floor after:  {_stalls.line(floor_after)}")
    print(f"jobs of N ms of CPU, wall p50/p99 ms (after): {_stalls.jobs_line(floor_after)}")
    spans = {name: max(run.spans_per_request for run in runs) for name, runs in results.items()}
    if spans["off"] > 0 or spans["100%"] < 0.9:
        print(f"tracing did not sample as configured: {spans}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    parser = wrk_parser(__doc__)
    sys.exit(asyncio.run(main(parser.parse_args())))
