"""Benchmark: a routing change under load, nginx's `-s reload` against an xgate file save and an etcd put.

Run from the repository: `.venv/bin/python bench/vs_nginx.py [--routes 100,10000] [--changes 20] [--json]
[--hosts N [--route-tables one|per_host]]`.
See bench/README.md. Per size, one system at a time, each under the same wrk load through it to the same origin:
- nginx (Debian's nginx-light, a master and one worker, from a temporary prefix; stopped by its PID): the
  config is rewritten (a temporary file renamed over it) and `nginx -s reload` run;
- xgate, file: the control plane (`xgate controlplane -f`) and a real Envoy; the config file saved the same way;
- xgate, etcd: the same following a 1-member etcd; one key put.
All route the same: `/probe` answers its generation (the change edits it), `/svc-<n>/` prefixes go to the origin
(an nginx), and wrk loads `/svc-1/load` throughout. For each change: the time from the change to the first
correct answer on a kept-alive connection and on a new connection, and the requests wrk saw fail.
With --hosts N the routes are spread over N hosts (`/svc-<n>/` on host-<n mod N>, the probe on host-0, wrk on
host-1's `/svc-1/`): nginx gets a server block per host, xgate a virtual host per host in one table or, with
`--route-tables per_host`, a table per host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import _cli
import _stalls
from _harness import dist
from _processes import controlplane, envoy, stop
from _wrk import SOCKET_ERRORS, wrk_counts
from etcd_propagation import load
from xgate.sources.etcd.client import EtcdClient, EtcdSettings
from xgate.sources.etcd.layout import DEFAULT_PREFIX, encode, key_of
from xgate.testing.etcd import run_etcd
from xgate.testing.gateway import free_port
from xgate.testing.nginx import nginx_argv, run_nginx, temp_paths

now = time.monotonic
SYSTEMS = ("nginx", "xgate-file", "xgate-etcd")
PROBE = "gen-"  # the probe's answer: PROBE + its generation
Machine = list[tuple[str, list[_stalls.Stalls]]]  # the machine's stall probes, by when
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


# -- the routing, written for each system ----------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """What every system routes: `routes` routes in all, over `hosts` hosts (0: any host), as `tables` in xgate."""

    routes: int
    hosts: int = 0
    tables: str = "one"

    def host(self, n: int) -> str | None:
        """The host of `/svc-<n>/` (n = -1: the probe's)."""
        return f"host-{max(n, 0) % self.hosts}" if self.hosts else None

    def headers(self, n: int) -> dict[str, str]:
        host = self.host(n)
        return {"Host": host} if host else {}

    def match(self, n: int, path: dict[str, str]) -> dict[str, Any]:
        host = self.host(n)
        return {"path": path} | ({"hosts": [host]} if host else {})


def xgate_config(routing: Routing, port: int, origin: int, generation: int) -> str:
    probe = {"name": "probe", "match": routing.match(-1, {"exact": "/probe"})}
    probe["direct_response"] = {"status": 200, "body": f"{PROBE}{generation}"}
    listener = {"name": "bench", "address": "127.0.0.1", "port": port, "route_tables": routing.tables}
    lines = [
        "xgate: v1",
        "listeners:",
        f"  - {json.dumps(listener)}",
        "upstreams:",
        f"  - {{name: origin, endpoints: ['127.0.0.1:{origin}']}}",
        "routes:",
        f"  - {json.dumps(probe)}",
        *(f"  - {json.dumps(svc_route(routing, n))}" for n in range(routing.routes - 1)),
    ]
    return "\n".join(lines) + "\n"


def svc_route(routing: Routing, n: int) -> dict[str, Any]:
    return {"name": f"svc-{n}", "match": routing.match(n, {"prefix": f"/svc-{n}/"}), "upstream": "origin"}


def etcd_values(routing: Routing, port: int, origin: int) -> dict[bytes, bytes]:
    listener = {"address": "127.0.0.1", "port": port, "route_tables": routing.tables}
    values = {key_of(DEFAULT_PREFIX, "listener", "bench"): encode(listener)}
    values[key_of(DEFAULT_PREFIX, "upstream", "origin")] = encode({"endpoints": [f"127.0.0.1:{origin}"]})
    values.update([probe_value(routing, 0)])
    for n in range(1, routing.routes):
        route = svc_route(routing, n)
        del route["name"]
        values[key_of(DEFAULT_PREFIX, "route", f"svc-{n}")] = encode(route)
    return values


def probe_value(routing: Routing, generation: int) -> tuple[bytes, bytes]:
    probe = {"match": routing.match(-1, {"exact": "/probe"})}
    probe["direct_response"] = {"status": 200, "body": f"{PROBE}{generation}"}
    return key_of(DEFAULT_PREFIX, "route", "probe"), encode(probe)


def nginx_config(prefix: Path, routing: Routing, port: int, origin: int, generation: int) -> str:
    proxied = 'proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";'
    probe = f'        location = /probe {{ return 200 "{PROBE}{generation}"; }}'
    blocks: dict[str | None, list[str]] = {routing.host(-1): [probe]}
    for n in range(routing.routes - 1):
        blocks.setdefault(routing.host(n), []).append(f"        location /svc-{n}/ {{ {proxied} }}")
    servers = "\n".join(
        f"""    server {{
        listen 127.0.0.1:{port};
        {f"server_name {host};" if host else ""}
        default_type text/plain;
{chr(10).join(locations)}
    }}"""
        for host, locations in blocks.items()
    )
    return f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp_paths(prefix)}
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 32; }}
{servers}
}}
"""


def save(path: Path, text: str) -> float:
    """Write `text` over `path` the way editors save (a temporary file renamed over it); t0, before the rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    t0 = now()
    os.replace(temporary, path)
    return t0


# -- nginx as the gateway ----------------------------------------------------------------------------------


@contextlib.contextmanager
def nginx_gateway(work: Path, routing: Routing, port: int, origin: int) -> Iterator[Callable[[int], float]]:
    """nginx (master + 1 worker, in the foreground) serving the routing; yields `change(generation) -> t0`."""
    prefix = work / "nginx-gateway"
    prefix.mkdir()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(prefix, routing, port, origin, 0))
    argv = nginx_argv(prefix, config)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def change(generation: int) -> float:
        t0 = save(config, nginx_config(prefix, routing, port, origin, generation))
        subprocess.run([*argv, "-s", "reload"], check=True, capture_output=True, timeout=30)
        return t0

    try:
        wait_for_answer(port, "/probe", PROBE.encode() + b"0", 60, routing.headers(-1))
        yield change
    finally:
        stop(proc, signal.SIGQUIT, 30)  # graceful: its workers finish what they serve


# -- xgate as the gateway ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def xgate_file(work: Path, routing: Routing, port: int, origin: int) -> AsyncIterator[Callable[[int], float]]:
    path = work / "gateway.yaml"
    path.write_text(xgate_config(routing, port, origin, 0))
    with controlplane(["-f", str(path)], work) as plane:
        plane.wait(0, 300)
        async with envoy(plane.xds_port, work):
            wait_for_answer(port, "/probe", PROBE.encode() + b"0", 60, routing.headers(-1))
            yield lambda generation: save(path, xgate_config(routing, port, origin, generation))


@contextlib.asynccontextmanager
async def xgate_etcd(work: Path, routing: Routing, port: int, origin: int) -> AsyncIterator[Callable[[int], float]]:
    async with (
        run_etcd(work / "etcd") as cluster,
        EtcdClient(EtcdSettings(endpoints=(cluster.endpoints[0],))) as client,
    ):
        await load(client, etcd_values(routing, port, origin))
        with controlplane(["--etcd", cluster.endpoints[0]], work) as plane:
            plane.wait(0, 300)
            async with envoy(plane.xds_port, work):
                wait_for_answer(port, "/probe", PROBE.encode() + b"0", 60, routing.headers(-1))
                loop = asyncio.get_running_loop()

                def change(generation: int) -> float:
                    key, value = probe_value(routing, generation)
                    t0 = now()
                    asyncio.run_coroutine_threadsafe(client.put(key, value), loop).result(30)
                    return t0

                yield change


# -- measuring ---------------------------------------------------------------------------------------------


def get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> bytes | None:
    """The body of GET `path` (None after a connection error: the caller reconnects)."""
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.read() if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        conn.close()
        return None


def wait_for_answer(port: int, path: str, wanted: bytes, timeout: float, headers: dict[str, str]) -> None:
    deadline = now() + timeout
    while now() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        found = get(conn, path, headers)
        conn.close()
        if found == wanted:
            return
        time.sleep(0.05)
    raise TimeoutError(f"127.0.0.1:{port}{path} did not answer {wanted!r} within {timeout} s")


@dataclass
class Change:
    kept_ms: float | None  # to the first correct answer on a kept-alive connection
    new_ms: float | None  # ... on a connection opened per request
    poll_errors: int  # connection errors the pollers met (a closed keep-alive connection, a refused one)


def first_answers(
    port: int, wanted: bytes, t0: float, kept: http.client.HTTPConnection, timeout: float, headers: dict[str, str]
) -> Change:
    """Poll /probe on `kept` and on new connections, alternately (1 ms apart), until both answer `wanted`."""
    change = Change(None, None, 0)
    while (change.kept_ms is None or change.new_ms is None) and now() - t0 < timeout:
        if change.kept_ms is None:
            body = get(kept, "/probe", headers)
            change.poll_errors += body is None
            if body == wanted:
                change.kept_ms = (now() - t0) * 1000
        if change.new_ms is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            body = get(conn, "/probe", headers)
            conn.close()
            change.poll_errors += body is None
            if body == wanted:
                change.new_ms = (now() - t0) * 1000
        time.sleep(0.001)
    return change


@dataclass
class Run:
    system: str
    routes: int
    changes: list[Change] = field(default_factory=list)
    load_requests: int = 0
    load_failed: int = 0
    load_seconds: float = 0.0


@contextlib.contextmanager
def wrk_load(port: int, connections: int, headers: dict[str, str]) -> Iterator[dict[str, int]]:
    """wrk on `/svc-1/load` through the gateway until the block ends (then SIGINT: it prints its totals)."""
    argv = ["wrk", "-t1", f"-c{connections}", "-d600s", f"http://127.0.0.1:{port}/svc-1/load"]
    argv += [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    totals: dict[str, int] = {}
    try:
        time.sleep(1.0)  # connections open, load steady
        yield totals
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
        counts = wrk_counts(output)
        totals["requests"] = counts["requests"]
        totals["failed"] = counts["non_2xx"] + sum(counts[kind] for kind in SOCKET_ERRORS)


async def measure(system: str, routing: Routing, args: argparse.Namespace, work: Path, origin: int) -> Run:
    port = free_port()
    starters = {"nginx": _nginx, "xgate-file": xgate_file, "xgate-etcd": xgate_etcd}
    run = Run(system, routing.routes)
    probe = routing.headers(-1)
    async with starters[system](work, routing, port, origin) as change:
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        with wrk_load(port, args.connections, routing.headers(1)) as totals:
            started = now()
            for generation in range(1, args.changes + 1):
                get(kept, "/probe", probe)  # the kept connection is open and idle, as a client's between requests
                t0 = await asyncio.to_thread(change, generation)
                run.changes.append(
                    await asyncio.to_thread(
                        first_answers, port, f"gen-{generation}".encode(), t0, kept, args.timeout, probe
                    )
                )
                await asyncio.sleep(random.uniform(0.2, 0.4))  # old nginx workers wind down; decorrelate timers
            run.load_seconds = now() - started
        kept.close()
    run.load_requests, run.load_failed = totals["requests"], totals["failed"]
    return run


@contextlib.asynccontextmanager
async def _nginx(work: Path, routing: Routing, port: int, origin: int) -> AsyncIterator[Callable[[int], float]]:
    with nginx_gateway(work, routing, port, origin) as change:
        yield change


async def run_all(args: argparse.Namespace) -> tuple[list[Run], Machine]:
    runs: list[Run] = []
    machine: Machine = []
    with tempfile.TemporaryDirectory(prefix="xgate-bench-vs-nginx-") as name:
        async with run_nginx(Path(name), "origin") as origin:
            for routes in args.routes:
                for system in args.systems:
                    if args.stall_seconds:
                        machine.append((f"before {system} {routes:,}", _stalls.measure(args.stall_seconds)))
                    work = Path(name) / f"{system}-{routes}"
                    work.mkdir()
                    routing = Routing(routes, args.hosts, args.route_tables)
                    runs.append(await measure(system, routing, args, work, origin.port))
    return runs, machine


# -- report ------------------------------------------------------------------------------------------------


def summarize(run: Run) -> dict[str, Any]:
    kept = [c.kept_ms for c in run.changes if c.kept_ms is not None]
    new = [c.new_ms for c in run.changes if c.new_ms is not None]
    return {
        "system": run.system,
        "routes": run.routes,
        "changes": len(run.changes),
        "timeouts": sum(c.kept_ms is None or c.new_ms is None for c in run.changes),
        "kept_alive_ms": dist(kept),
        "new_connection_ms": dist(new),
        "poll_errors": sum(c.poll_errors for c in run.changes),
        "load_requests": run.load_requests,
        "load_failed": run.load_failed,
        "load_rps": round(run.load_requests / run.load_seconds) if run.load_seconds else 0,
        "failed_per_change": round(run.load_failed / len(run.changes), 2) if run.changes else 0,
    }


def print_report(summaries: list[dict[str, Any]], machine: Machine, out: IO[str]) -> None:
    print(
        "a routing change under wrk load: time to the first correct answer (p50/p99 ms) on a kept-alive and on a "
        "new connection, and the requests wrk saw fail",
        file=out,
    )
    print(
        f"{'routes':>6} {'system':<11} {'changes':>7} | {'kept-alive':>13} {'new conn':>13} | {'vs nginx (p50)':>15} | "
        f"{'failed':>6} {'per change':>10} {'load rps':>9} {'poll errs':>9}",
        file=out,
    )
    nginx = {s["routes"]: s for s in summaries if s["system"] == "nginx"}
    for s in summaries:
        base = nginx.get(s["routes"])
        faster = ""
        if base is not None and s["system"] != "nginx":
            kept = base["kept_alive_ms"]["p50"] / s["kept_alive_ms"]["p50"]
            new = base["new_connection_ms"]["p50"] / s["new_connection_ms"]["p50"]
            faster = f"{kept:.0f}x / {new:.0f}x"
        k, n = s["kept_alive_ms"], s["new_connection_ms"]
        print(
            f"{s['routes']:>6} {s['system']:<11} {s['changes']:>7} | {k['p50']:>6.1f}/{k['p99']:<6.1f} "
            f"{n['p50']:>6.1f}/{n['p99']:<6.1f} | {faster:>15} | {s['load_failed']:>6} {s['failed_per_change']:>10} "
            f"{s['load_rps']:>9} {s['poll_errors']:>9}",
            file=out,
        )
    for when, stalls in machine:
        print(f"machine {when}: {_stalls.line(stalls)}", file=out)
        print(f"  {'':>20}jobs of N ms of CPU, p50/p99 ms: {_stalls.jobs_line(stalls)}", file=out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--routes", type=lambda v: [int(x) for x in v.split(",")], default=[100, 10000])
    parser.add_argument("--changes", type=int, default=20, help="changes per system and size (default 20)")
    parser.add_argument("--systems", type=lambda v: v.split(","), default=list(SYSTEMS))
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a change may take")
    parser.add_argument("--stall-seconds", type=float, default=1.0)
    _cli.host_options(parser)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    args = parse_args(argv)
    runs, machine = asyncio.run(run_all(args))
    summaries = [summarize(run) for run in runs]
    if args.json:
        data = {
            "summaries": summaries,
            "changes": [asdict(run) for run in runs],
            "machine_stalls": {when: [stall.summary() for stall in stalls] for when, stalls in machine},
        }
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        print_report(summaries, machine, out)
    return 1 if any(s["timeouts"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
