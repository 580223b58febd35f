"""What traffic dyeing costs through a real Envoy, in one run, measured with wrk (Debian package) on loopback:
a bare listener (no dyeing), a listener whose rules compile to route matches (native), and a listener whose
same rules run in `xgate dyeing` (ext_proc over gRPC, its own process).

    .venv/bin/python bench/dyeing.py [--seconds 5] [--connections 32] [--threads 1] [--rounds 2]

The three listeners share one route (`upstream: v1`, `canary: {stage: canary, upstream: v2}`) on one Envoy.
The upstreams are a second Envoy answering with a direct response (two listeners, v1 and v2), so the figures
are the gateway's work and not a Python upstream's. Four rules, the second one matching: every request
carries `x-canary: 1` and a cookie that the first rule (a cookie regex) has to read and reject, so dyed
requests go to v2 with `x-xgate-stage: canary`. Before measuring, one request per listener checks that the
upstream saw the stage it should; during each run the origin's counters check where every request went.
Listeners are measured alternately, `--rounds` times each. Exit code 1 when the ext_proc service was late and
Envoy passed requests on undyed (they would flatter its figures).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, NamedTuple

from _harness import stop_process
from _processes import OK, static_bootstrap, static_listener
from _wrk import have_wrk, wrk_parser, wrk_run
from xgate.proxy.process import EnvoyProcess
from xgate.supervisor import die_with_parent
from xgate.testing import free_port, run_gateway

RULES = """\
- {stage: beta, cookie: {name: release, exact: beta}}
- {stage: canary, header: {name: x-canary, exact: "1"}}
- {stage: canary, query: {name: canary, present: true}}
- {stage: beta, header: {name: x-beta, regex: "ye[sp]"}}
"""
HEADERS = {"x-canary": "1", "cookie": "session=6f1c2a9e; theme=dark"}
STAGE = "x-xgate-stage"


def config(ports: dict[str, int], dyeing: int, origins: dict[str, int]) -> str:
    rules = textwrap.indent(RULES, " " * 10)
    return f"""
listeners:
  - {{name: bare, address: 127.0.0.1, port: {ports["bare"]}}}
  - name: native
    address: 127.0.0.1
    port: {ports["native"]}
    plugins:
      dyeing:
        mode: native
        rules:
{rules}  - name: ext_proc
    address: 127.0.0.1
    port: {ports["ext_proc"]}
    plugins:
      dyeing:
        mode: ext_proc
        service: "127.0.0.1:{dyeing}"
        rules:
{rules}upstreams:
  - {{name: v1, endpoints: ["127.0.0.1:{origins["v1"]}"]}}
  - {{name: v2, endpoints: ["127.0.0.1:{origins["v2"]}"]}}
routes:
  - {{name: bare, listeners: [bare], upstream: v1}}
  - name: dyed
    listeners: [native, ext_proc]
    upstream: v1
    canary: {{stage: canary, upstream: v2, fallback: false}}
"""


def origin_bootstrap(origins: dict[str, int]) -> dict[str, Any]:
    """A static Envoy with one listener per upstream version: a direct response whose headers say which
    version answered and the stage and baggage it was sent."""

    def listener(name: str, port: int) -> dict[str, Any]:
        echo = {"x-origin": name, "x-origin-stage": f"%REQ({STAGE})%", "x-origin-baggage": "%REQ(baggage)%"}
        route = {**OK, "response_headers_to_add": [{"header": {"key": k, "value": v}} for k, v in echo.items()]}
        return static_listener(name, port, [route])

    return static_bootstrap([listener(name, port) for name, port in origins.items()])


class DyeingService:
    """`xgate dyeing` in its own process, as deployed (here it would share the control plane's event loop)."""

    def __init__(self, xds_port: int, port: int, log_path: Path) -> None:
        self._log_path = log_path
        self._log = log_path.open("wb")
        argv = [
            sys.executable,
            "-m",
            "xgate",
            "dyeing",
            "--xds",
            f"127.0.0.1:{xds_port}",
            "--listen",
            f"127.0.0.1:{port}",
        ]
        self.proc = subprocess.Popen(
            die_with_parent([*argv, "--log-level", "warning"]),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while b"dyeing ready" not in self._log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self._log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"xgate dyeing was not ready within {timeout} s:\n{tail}")
            await asyncio.sleep(0.05)

    def complaints(self) -> list[str]:
        """What the service logged besides its ready line (it logs warnings and errors only)."""
        lines = self._log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if "dyeing ready" not in line]

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


class Seen(NamedTuple):
    """What one request got: status, the upstream version that answered, the stage and baggage it was sent."""

    status: int
    origin: str | None
    stage: str | None
    baggage: str | None


def get(port: int, headers: dict[str, str]) -> Seen:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/users", headers=headers)
        response = connection.getresponse()
        response.read()

        def header(name: str) -> str | None:
            value = response.getheader(name)
            return None if value in (None, "", "-") else value

        return Seen(response.status, header("x-origin"), header("x-origin-stage"), header("x-origin-baggage"))
    finally:
        connection.close()


def verify(ports: dict[str, int]) -> None:
    """Each listener does what it claims, with the benchmark's headers and without them; fail loudly if not."""
    canary = Seen(200, "v2", "canary", "xgate-stage=canary")
    stable = Seen(200, "v1", "stable", "xgate-stage=stable")
    expected = {
        ("bare", True): Seen(200, "v1", None, None),
        ("native", True): canary,
        ("ext_proc", True): canary,
        ("native", False): stable,
        ("ext_proc", False): stable,
    }
    wrong = []
    for (listener, dyed), wanted in expected.items():
        headers = HEADERS if dyed else {"cookie": HEADERS["cookie"]}
        got = get(ports[listener], headers)
        if got != wanted:
            wrong.append(f"{listener} with {headers}: got {got}, expected {wanted}")
    if wrong:
        raise RuntimeError("dyeing does not do what the benchmark measures:\n  " + "\n  ".join(wrong))


class Run(NamedTuple):
    rps: float
    p50: float  # ms
    p99: float  # ms
    dyed: float = 0.0  # share of the run's requests that reached v2 (the canary), from the origin's counters


def run_wrk(url: str, args: argparse.Namespace) -> Run:
    """One bounded wrk run with the benchmark's headers; wrk seeing any error fails the benchmark."""
    headers = [f"{name}: {value}" for name, value in HEADERS.items()]
    result = wrk_run(url, args.seconds, args.connections, args.threads, headers)
    if result.errors:
        raise RuntimeError(f"wrk saw errors on {url}:\n{result.output}")
    return Run(result.rps, result.p50_ms, result.p99_ms)


async def served(origin: EnvoyProcess) -> dict[str, int]:
    """Requests each upstream version has answered so far (the origin's own counters)."""
    _, body = await origin.admin_get("/stats?filter=^http\\.v[12]\\.downstream_rq_completed$")
    counts = dict(line.split(": ") for line in body.splitlines() if ": " in line)
    return {version: int(counts.get(f"http.{version}.downstream_rq_completed", 0)) for version in ("v1", "v2")}


async def settled(origin: EnvoyProcess) -> dict[str, int]:
    """`served` once the requests wrk left in flight have landed (two reads 50 ms apart agree)."""
    previous = await served(origin)
    while True:
        await asyncio.sleep(0.05)
        current = await served(origin)
        if current == previous:
            return current
        previous = current


async def measure(listener: str, port: int, origin: EnvoyProcess, args: argparse.Namespace) -> Run:
    """One wrk run and the share of its requests that reached the canary. Fails if a route is wrong; the
    ext_proc listener may fall short of 100% when the service is late (`on_error: pass` sends those
    requests on undyed, to v1), which `main` reports."""
    before = await settled(origin)
    run = await asyncio.to_thread(run_wrk, f"http://127.0.0.1:{port}/users", args)
    after = await settled(origin)
    v1, v2 = (after[version] - before[version] for version in ("v1", "v2"))
    if not v1 + v2 or (v2 if listener == "bare" else v1 if listener == "native" else 0):
        raise RuntimeError(f"{listener}: {v1} requests reached v1 and {v2} v2 during the run")
    return run._replace(dyed=v2 / (v1 + v2))


async def ext_proc_counters(gateway: EnvoyProcess) -> list[str]:
    """The gateway's ext_proc filter counters that are not 0 (message_timeouts, failure_mode_allowed...)."""
    _, stats = await gateway.admin_get("/stats?filter=^http\\.[a-z_]+\\.ext_proc\\.")
    return [line for line in stats.splitlines() if not line.endswith(": 0")]


def table(results: dict[str, list[Run]], baseline: str) -> str:
    """Each listener's runs, its best rate with that run's p50 and p99, and its share of the baseline's best."""
    best = {name: max(runs) for name, runs in results.items()}
    lines = [
        f"{'listener':9} {'rps (each run)':>22} {'best rps':>9} {'p50 ms':>7} {'p99 ms':>7} {'of ' + baseline:>8}"
        f" {'to canary':>9}"
    ]
    for name, runs in results.items():
        each = ", ".join(f"{run.rps:,.0f}" for run in runs)
        share = best[name].rps / best[baseline].rps
        lines.append(
            f"{name:9} {each:>22} {best[name].rps:>9,.0f} {best[name].p50:>7.2f} {best[name].p99:>7.2f} {share:>8.1%}"
            f" {min(run.dyed for run in runs):>9.1%}"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    if not have_wrk():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    ports = {name: free_port() for name in ("bare", "native", "ext_proc")}
    origins = {name: free_port() for name in ("v1", "v2")}
    dyeing = free_port()
    results: dict[str, list[Run]] = {name: [] for name in ports}
    with tempfile.TemporaryDirectory(prefix="xgate-bench-dyeing-") as name:
        work = Path(name)
        with (work / "origin.log").open("wb") as origin_log:
            origin = EnvoyProcess(origin_bootstrap(origins), work / "origin", concurrency=1, output=origin_log)
            await origin.start()
            try:
                await origin.wait_ready(20)
                async with run_gateway(config(ports, dyeing, origins), work / "gw") as gateway:
                    service = DyeingService(gateway.xds_port, dyeing, work / "dyeing.log")
                    try:
                        await service.wait_ready()
                        await asyncio.to_thread(verify, ports)
                        for _ in range(args.rounds):
                            for listener, port in ports.items():
                                results[listener].append(await measure(listener, port, origin, args))
                        await asyncio.to_thread(verify, ports)  # still dyeing after the load
                        counters = await ext_proc_counters(gateway.envoys[0])
                    finally:
                        service.stop()
                        for line in service.complaints()[-20:]:
                            print(f"xgate dyeing: {line}", file=sys.stderr)
            finally:
                await origin.stop()
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, Envoy --concurrency 1, "
        "upstream: a second Envoy (direct response), ext_proc: xgate dyeing in its own process"
    )
    print(table(results, "bare"))
    native = max(results["native"]).rps / max(results["bare"]).rps
    ext_proc = max(results["ext_proc"]).rps / max(results["bare"]).rps
    verdict = "met" if native >= 0.8 else "MISSED"
    print(f"native/bare {native:.1%} (target >= 80%: {verdict}), ext_proc/bare {ext_proc:.1%}")
    if min(run.dyed for run in results["ext_proc"]) < 1:
        print("ext_proc: some requests went on undyed (the service was late), and the figures count them:")
        print("  " + "\n  ".join(counters))
        return 1
    return 0


if __name__ == "__main__":
    parser = wrk_parser(__doc__)
    sys.exit(asyncio.run(main(parser.parse_args())))
