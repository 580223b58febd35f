"""What the per-request services let through at their capacity and at twice it (issue 19, item 4).

    flock /tmp/xgate-test.lock flock /tmp/xgate-bench.lock .venv/bin/python bench/overload.py \\
        [--seconds 10] [--users 5000] [--limit 200]

One gateway Envoy (run_gateway, --concurrency 1), its upstreams a second Envoy answering directly and logging
each request (user, stage, version) to a file, the services in their own processes.

Dyeing: one sticky rule, 20% of users (by `x-user-id`) to the canary, on two listeners: `service` (`mode:
ext_proc`: `xgate dyeing` computes the bucket) and `native` (Envoy's Lua filter computes it). The service's
capacity C is its best closed-loop rate through Envoy (wrk, 32 connections). Each listener is then offered C
and 2C requests a second (the open-loop generator, bench/openloop.c, each request from the next of `--users`
users), and the origin's log says how many requests went on undyed (no stage: the service was late and
`on_error: pass` sent them on) and how many users kept their stage (every request of theirs reached the version
of their bucket). Targets: on the native path no request undyed and >= 99.9% of users sticky at 2C.

Global rate limit: `--limit` requests a second on a route, the rate-limit service in memory. Its capacity C is
the best closed-loop rate through Envoy of a route whose limit is never reached. Each route (pre-limit on, the
default, and off) is offered C and 2C; admitted = the requests the origin answered, allowed = limit x seconds
+ burst. Target: over-admission <= 5% with the pre-limit. Envoy's counters show why any passed: the service
failed open (failure_mode_allowed), or the pre-limit refused locally (its 429s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from _openloop import generator_argv
from _stalls import jobs_line, line, measure
from _wrk import have_wrk, wrk_run
from xgate.dyeing.rules import sticky_bucket
from xgate.proxy.process import EnvoyProcess
from xgate.testing import free_port, run_dyeing_service, run_gateway, run_ratelimit_service

PERCENT = 20
USER = "x-user-id"


def config(ports: dict[str, int], dyeing: int, ratelimit: int, origins: dict[str, int], limit: int) -> str:
    rule = f"rules: [{{stage: canary, sticky: {{percent: {PERCENT}, key: {{header: {USER}}}}}}}]"
    service = f'service: "127.0.0.1:{dyeing}"'
    return f"""
plugins:
  rate_limit: {{service: "127.0.0.1:{ratelimit}", timeout: 50ms}}
listeners:
  - name: service
    address: 127.0.0.1
    port: {ports["service"]}
    plugins: {{dyeing: {{mode: ext_proc, {service}, {rule}}}}}
  - {{name: native, address: 127.0.0.1, port: {ports["native"]}, plugins: {{dyeing: {{{service}, {rule}}}}}}}
  - {{name: limits, address: 127.0.0.1, port: {ports["limits"]}}}
upstreams:
  - {{name: v1, endpoints: ["127.0.0.1:{origins["v1"]}"]}}
  - {{name: v2, endpoints: ["127.0.0.1:{origins["v2"]}"]}}
routes:
  - name: users
    listeners: [service, native]
    upstream: v1
    canary: {{stage: canary, upstream: v2, fallback: false}}
  - name: prelimit
    listeners: [limits]
    match: {{path: {{prefix: /prelimit}}}}
    upstream: v1
    plugins: {{rate_limit: {{global: {{requests: {limit}, per: 1s}}}}}}
  - name: no-prelimit
    listeners: [limits]
    match: {{path: {{prefix: /no-prelimit}}}}
    upstream: v1
    plugins: {{rate_limit: {{global: {{requests: {limit}, per: 1s, prelimit: false}}}}}}
  - name: unlimited
    listeners: [limits]
    match: {{path: {{prefix: /unlimited}}}}
    upstream: v1
    plugins: {{rate_limit: {{global: {{requests: 1000000000, per: 1s, prelimit: false}}}}}}
"""


def origin_bootstrap(origins: dict[str, int], log: Path) -> dict[str, Any]:
    """A static Envoy, one listener per version, answering directly and logging user, stage, version, path."""

    def listener(name: str, port: int) -> dict[str, Any]:
        manager = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": str(log),
                "log_format": {"text_format_source": {
                    "inline_string": f"%REQ({USER})% %REQ(X-XGATE-STAGE)% {name} %REQ(:PATH)%\n"}}}}],
        }  # fmt: skip
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": manager}]}],
        }  # fmt: skip

    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener(name, port) for name, port in origins.items()]},
    }


class Log:
    """The origin's access log, read in slices: what one run's requests did."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    async def since(self, expected: int) -> list[list[str]]:
        """The lines written since the last call, once they stop growing (the log is flushed every 100 ms)."""
        size = -1
        for _ in range(600):
            await asyncio.sleep(0.25)
            now = self.path.stat().st_size if self.path.exists() else 0
            if now == size and now - self.offset > 0:
                break
            size = now
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read()
        self.offset += len(data)
        lines = [line.split(" ") for line in data.decode(errors="replace").splitlines()]
        if len(lines) < expected * 0.5:
            print(f"  (only {len(lines)} of ~{expected} requests reached the origin)", file=sys.stderr)
        return lines


def openloop(url: str, rate: float, seconds: float, users: int | None) -> dict[str, float]:
    argv = [*generator_argv("c"), url, "--rate", f"{rate:.0f}", "--seconds", str(seconds), "--connections", "512"]
    if users:
        argv += ["--vary", USER, "--users", str(users)]
    result = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=seconds + 90, check=True)
    figures: dict[str, float] = json.loads(result.stdout)
    return figures


def capacity(url: str, headers: list[str]) -> float:
    """The best of two closed-loop wrk runs: the rate the path sustains when saturated."""
    return max(wrk_run(url, 5, 32, 1, headers).rps for _ in range(2))


async def counters(envoy: EnvoyProcess, pattern: str) -> Counter[str]:
    _, body = await envoy.admin_get(f"/stats?filter={pattern}")
    pairs = (line.partition(": ") for line in body.splitlines())
    return Counter({key: int(value) for key, _, value in pairs if value.isdigit()})


async def dyeing_runs(args: argparse.Namespace, ports: dict[str, int], log: Log, envoy: EnvoyProcess) -> list[str]:
    canary = {f"u{index}" for index in range(args.users) if sticky_bucket("canary", f"u{index}") < PERCENT * 100}
    found = await asyncio.to_thread(capacity, f"http://127.0.0.1:{ports['service']}/users", [f"{USER}: u1"])
    await log.since(0)  # the capacity runs' requests are not the first open-loop run's
    rows = [f"dyeing service capacity C = {found:,.0f} requests/s (wrk -c32, best of 2)"]
    rows.append(f"{'path':8} {'load':>5} {'rate':>6} {'answered':>9} {'undyed':>8} {'users sticky':>13} {'p50 ms':>7}"
                f" {'p99 ms':>7}  Envoy ext_proc")  # fmt: skip
    for listener in ("service", "native"):
        for load in (1, 2):
            rate = found * load
            before = await counters(envoy, f"^http\\.{listener}\\.ext_proc\\.")
            figures = await asyncio.to_thread(
                openloop, f"http://127.0.0.1:{ports[listener]}/users", rate, args.seconds, args.users
            )
            lines = await log.since(int(rate * args.seconds))
            delta = await counters(envoy, f"^http\\.{listener}\\.ext_proc\\.") - before
            undyed = sum(1 for entry in lines if entry[1] == "-")
            versions: dict[str, set[str]] = defaultdict(set)
            for entry in lines:
                versions[entry[0]].add(entry[2])
            kept = sum(1 for user, got in versions.items() if got == {"v2" if user in canary else "v1"})
            shown = {key.rsplit(".", 1)[1]: value for key, value in delta.items() if value}
            rows.append(
                f"{listener:8} {load:>4}C {rate:>6,.0f} {len(lines):>9,} {undyed / max(1, len(lines)):>8.2%} "
                f"{kept / max(1, len(versions)):>13.2%} {figures['p50_ms']:>7.1f} {figures['p99_ms']:>7.1f}  {shown}"
            )
    return rows


async def limit_runs(args: argparse.Namespace, ports: dict[str, int], log: Log, envoy: EnvoyProcess) -> list[str]:
    found = await asyncio.to_thread(capacity, f"http://127.0.0.1:{ports['limits']}/unlimited", [])
    await log.since(0)
    allowed = args.limit * args.seconds + args.limit  # the token bucket starts full: `requests` of burst
    rows = [f"rate-limit service capacity C = {found:,.0f} decisions/s (wrk -c32, best of 2); limit {args.limit}/s,"
            f" allowed in {args.seconds:g} s: {allowed:,.0f}"]  # fmt: skip
    rows.append(f"{'route':11} {'load':>5} {'rate':>6} {'admitted':>9} {'over':>7} {'p99 ms':>7}  Envoy counters")
    for route in ("prelimit", "no-prelimit"):
        for load in (1, 2):
            rate = found * load
            pattern = "ratelimit|xgate_global_prelimit"
            before = await counters(envoy, pattern)
            figures = await asyncio.to_thread(
                openloop, f"http://127.0.0.1:{ports['limits']}/{route}", rate, args.seconds, None
            )
            lines = await log.since(allowed)
            delta = await counters(envoy, pattern) - before
            admitted = sum(1 for entry in lines if entry[3].startswith(f"/{route}"))
            over = max(0.0, admitted - allowed) / allowed
            shown = {key.split(".", 2)[-1]: value for key, value in delta.items() if (value and "upstream/v1" in key)
                     or ("prelimit.http_local_rate_limit.rate_limited" in key and value)}  # fmt: skip
            rows.append(
                f"{route:11} {load:>4}C {rate:>6,.0f} {admitted:>9,} {over:>7.1%} {figures['p99_ms']:>7.1f}  {shown}"
            )
    return rows


async def main(args: argparse.Namespace) -> int:
    if not have_wrk():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    ports = {name: free_port() for name in ("service", "native", "limits")}
    origins = {name: free_port() for name in ("v1", "v2")}
    dyeing, ratelimit = free_port(), free_port()
    before = await asyncio.to_thread(measure, 2)
    with tempfile.TemporaryDirectory(prefix="xgate-bench-overload-") as name:
        work = Path(name)
        log = Log(work / "access.log")
        origin = EnvoyProcess(
            origin_bootstrap(origins, log.path), work / "origin", concurrency=1,
            extra_args=["--file-flush-interval-msec", "100"], output=(work / "origin.out").open("wb"),
        )  # fmt: skip
        await origin.start()
        try:
            await origin.wait_ready(20)
            text = config(ports, dyeing, ratelimit, origins, args.limit)
            async with (
                run_gateway(text, work / "gw") as gateway,
                run_dyeing_service(gateway.xds_port, dyeing),
                run_ratelimit_service(gateway.xds_port, ratelimit),
            ):
                envoy = gateway.envoys[0]
                rows = await dyeing_runs(args, ports, log, envoy)
                rows += ["", *await limit_runs(args, ports, log, envoy)]
        finally:
            await origin.stop()
    after = await asyncio.to_thread(measure, 2)
    print(f"open loop {args.seconds:g} s per run (bench/openloop.c, 512 connections), {args.users} users")
    print("\n".join(rows))
    print(f"machine before: {line(before)}\n  {jobs_line(before)}\nmachine after: {line(after)}\n  {jobs_line(after)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per open-loop run (default 10)")
    parser.add_argument("--users", type=int, default=5000, help="distinct users of the dyeing runs (default 5000)")
    parser.add_argument("--limit", type=int, default=200, help="the global limit, requests/s (default 200)")
    sys.exit(asyncio.run(main(parser.parse_args())))
