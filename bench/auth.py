"""What authentication costs through a real Envoy, in one run, on loopback: a bare route, a route behind Envoy's
own jwt_authn (native, RS256), the same provider verified in Python by `xgate authz` (ext_authz over gRPC,
verified-token cache), a declarative policy lowered to Envoy's RBAC filter (`lowered`), and routes with native jwt
plus a Python policy in `xgate authz`, over gRPC and over the HTTP transport (`-http`): a plain function
(`@cacheable`, and without the mark: `policy-uncached-http`; it only reads its arguments, so xgate authz proves
it pure and runs it where the check is handled), an `@inline` one, and a plain function that uses a module
(`policy-pool-http`: not provable, so it runs in the policy pool).

    flock /tmp/xgate-bench.lock .venv/bin/python bench/auth.py [--seconds 5] [--connections 32] [--threads 1]
        [--rounds 2] [--fixed-seconds 10] [--fixed-routes policy-http,policy-inline-http,policy-uncached-http]
        [--pin] [--distinct-tokens N] [--generator c|python]

Part 1, wrk (Debian package, closed loop): the routes measured alternately, `--rounds` times each; the table
shows each run, the best rate with its p99, and each route's share of the bare route's best rate.
Part 2, fixed rate: each of `--fixed-routes` at half of its best wrk rate for `--fixed-seconds`, then the bare
route at that rate, and the bare route at half of its own best rate (the policy target's criterion met by Envoy
alone, or not), with an open-loop generator (latency from each request's scheduled send time; see
bench/README.md for why not wrk): bench/openloop.c, compiled on demand, or with `--generator python`
bench/_openloop.py, its asyncio original. Each line shows the generator's own CPU time, spent on the CPU Envoy uses.
All routes answer with a direct response, so the figures are Envoy's (and the authz service's) work. Every
request carries the same valid token, so verified-token caches always hit; with `--distinct-tokens N` wrk sends
N tokens in turn instead (N > 10,000: every verification is a cold one). `xgate authz` runs as a process of
its own, as it is deployed, and so do the load generators.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

import _stalls
from _cli import JOBS_TITLE
from _openloop import GENERATORS, generator_argv
from _wrk import best_table, have_wrk, wrk, wrk_parser
from xgate.testing import run_gateway
from xgate.testing.ports import free_ports

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "policies"
# The example policies: allow_admins is a plain function (runs in the service's thread pool), read_only an
# @inline one (runs where the check is handled), admins_read_write a declarative rule (lowered to Envoy); all
# allow the benchmark's GET with its admin token.
ROUTES = (
    "bare", "jwt", "jwt-py", "lowered", "policy", "policy-inline", "policy-http", "policy-inline-http",
    "policy-uncached-http", "policy-pool-http",
)  # fmt: skip
FIXED_ROUTES = ("policy-http", "policy-inline-http", "policy-uncached-http")
# The targets of issue 19, as shares of the bare route's best rate in the same run.
TARGETS = {"lowered": 0.80, "policy-http": 0.25, "policy-inline-http": 0.25, "policy-uncached-http": 0.25}
# allow_admins declares itself cacheable: with one token, its HTTP route measures the decision cache. The same
# function without the mark (called for every check; proven pure, so inline) is measured too, from a module of the
# run, and once more calling a module (time), which keeps it in the policy pool: what a policy doing I/O costs
# besides its I/O.
UNCACHED = """
import time

from xgate.authz import Allow, Deny


def allow_admins(request, claims):
    if "admin" in claims.get("roles", []):
        return Allow(headers={"x-xgate-user": str(claims["sub"])})
    return Deny(403, body="admins only")


def allow_admins_pool(request, claims):
    if "admin" in claims.get("roles", []) and claims.get("exp", 0) > time.time():
        return Allow(headers={"x-xgate-user": str(claims["sub"])})
    return Deny(403, body="admins only")
"""
P99_MARGIN_MS = 5.0  # a policy route's p99 at half its best rate may exceed bare's at that rate by this much


def setup(distinct: int) -> tuple[dict[str, Any], list[str]]:
    """An RSA key pair: the public JWKS for the config, and `distinct` tokens (at least one) signed with the
    private key, each for another subject."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(alg="RS256", kid="bench")
    exp = int(time.time()) + 3600
    tokens = [
        jwt.encode(
            {"iss": "https://bench.test", "sub": f"user-{index}", "roles": ["admin"], "groups": ["admin"], "exp": exp},
            key,
            algorithm="RS256",
            headers={"kid": "bench"},
        )
        for index in range(max(distinct, 1))
    ]
    return {"keys": [jwk]}, tokens


def token_script(work: Path, tokens: list[str]) -> Path:
    """A wrk Lua script sending the tokens in turn, one per request, so no verified-token cache can hold them
    all when there are more than its 10,000 entries."""
    (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
    script = work / "tokens.lua"
    script.write_text(
        f"local tokens = {{}}\n"
        f"for line in io.lines({json.dumps(str(work / 'tokens.txt'))}) do tokens[#tokens + 1] = line end\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #tokens + 1\n"
        '  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[i]})\n'
        "end\n"
    )
    return script


def config(port: int, authz: int, jwks: dict[str, Any], http_port: int = 0, authz_http: int = 0) -> str:
    """The routes on listener `public`; with `http_port`, the policy routes again on listener `http`, whose
    Python policies xgate authz answers over HTTP at `authz_http` (its --http-listen)."""
    policy = {"policies": {"admins": "xgate_example_policies:allow_admins",
                           "read-only": "xgate_example_policies:read_only",
                           "declarative": "xgate_example_policies:admins_read_write",
                           "uncached": "xgate_bench_uncached:allow_admins",
                           "pool": "xgate_bench_uncached:allow_admins_pool"},
              "service": f"127.0.0.1:{authz}"}  # fmt: skip
    listeners: list[dict[str, Any]] = [{"name": "public", "address": "127.0.0.1", "port": port}]
    if http_port:
        http = {**policy, "transport": "http", "http_service": f"127.0.0.1:{authz_http}"}
        listeners.append({"name": "http", "address": "127.0.0.1", "port": http_port, "plugins": {"policy": http}})
    return json.dumps({
        "plugins": {
            "jwt": {"providers": [{"name": "main", "issuer": "https://bench.test", "jwks": jwks},
                                  {"name": "py", "verify": "python", "issuer": "https://bench.test", "jwks": jwks}]},
            "policy": policy,
        },
        "listeners": listeners,
        "routes": [
            {"name": "lowered", "match": {"path": {"exact": "/lowered"}},
             "direct_response": {"status": 200, "body": "ok"},
             "plugins": {"jwt": {"provider": "main"}, "policy": {"name": "declarative"}}},
            {"name": "bare", "match": {"path": {"exact": "/bare"}}, "direct_response": {"status": 200, "body": "ok"},
             "plugins": {"jwt": False}},
            {"name": "jwt", "match": {"path": {"exact": "/jwt"}}, "direct_response": {"status": 200, "body": "ok"},
             "plugins": {"jwt": {"provider": "main"}}},
            {"name": "jwt-py", "match": {"path": {"exact": "/jwt-py"}},
             "direct_response": {"status": 200, "body": "ok"}, "plugins": {"jwt": {"provider": "py"}}},
            {"name": "policy", "match": {"path": {"exact": "/policy"}},
             "direct_response": {"status": 200, "body": "ok"},
             "plugins": {"jwt": {"provider": "main"}, "policy": {"name": "admins"}}},
            {"name": "policy-uncached", "match": {"path": {"exact": "/policy-uncached"}},
             "direct_response": {"status": 200, "body": "ok"},
             "plugins": {"jwt": {"provider": "main"}, "policy": {"name": "uncached"}}},
            {"name": "policy-pool", "match": {"path": {"exact": "/policy-pool"}},
             "direct_response": {"status": 200, "body": "ok"},
             "plugins": {"jwt": {"provider": "main"}, "policy": {"name": "pool"}}},
            {"name": "policy-inline", "match": {"path": {"exact": "/policy-inline"}},
             "direct_response": {"status": 200, "body": "ok"},
             "plugins": {"jwt": {"provider": "main"}, "policy": {"name": "read-only"}}},
        ],
    })  # fmt: skip


def url(ports: dict[str, int], route: str) -> str:
    """A `-http` route is its gRPC namesake on the listener whose policies go over HTTP."""
    if route.endswith("-http"):
        return f"http://127.0.0.1:{ports['http']}/{route.removesuffix('-http')}"
    return f"http://127.0.0.1:{ports['public']}/{route}"


async def main(args: argparse.Namespace) -> int:
    if args.pin:
        os.sched_setaffinity(0, {0})  # this process and what it starts (Envoy, wrk, the generator); authz: CPU 1
    if not have_wrk():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    generator = generator_argv(args.generator)  # before anything starts: a failed compile ends the run here
    jwks, tokens = setup(args.distinct_tokens)
    ports = dict(zip(("public", "http", "authz", "authz_http"), free_ports(4), strict=True))
    fixed_routes = [route for route in args.fixed_routes.split(",") if route]
    if unknown := set(fixed_routes) - set(ROUTES):
        print(f"--fixed-routes: unknown {sorted(unknown)} (routes: {', '.join(ROUTES)})", file=sys.stderr)
        return 2
    results: dict[str, list[tuple[float, float]]] = {route: [] for route in ROUTES}
    # The control plane imports the example policies too (it lowers the declarative one).
    sys.path.insert(0, str(EXAMPLES))
    with tempfile.TemporaryDirectory(prefix="xgate-bench-auth-") as work:
        (Path(work) / "xgate_bench_uncached.py").write_text(UNCACHED)
        sys.path.insert(0, work)
        text = config(ports["public"], ports["authz"], jwks, ports["http"], ports["authz_http"])
        script = token_script(Path(work), tokens) if args.distinct_tokens else None
        async with run_gateway(text, Path(work) / "gw") as gateway:
            service = await start_authz(
                gateway.xds_port, ports["authz"], ports["authz_http"], pin=args.pin, path=Path(work)
            )
            try:
                await gateway.wait_synced(gateway.plane.state.applied or "")
                assert not gateway.plane.state.warnings, gateway.plane.state.warnings  # the rule is lowered
                headers = [f"Authorization: Bearer {tokens[0]}"]
                for _ in range(args.rounds):
                    for route in results:
                        run = await asyncio.to_thread(
                            wrk, url(ports, route), args.seconds, args.connections, args.threads,
                            [] if script else headers, script,
                        )  # fmt: skip
                        results[route].append(run)
                fixed: list[tuple[str, float, dict[str, float]]] = []
                # The bare route at half its own best too: the target's criterion applied to Envoy alone. Pinned,
                # its generator runs on the authz service's CPU (idle then): at that rate it would take about a
                # third of Envoy's.
                halves = {route: max(rps for rps, _ in results[route]) / 2 for route in (*fixed_routes, "bare")}
                machine = [("before", _stalls.measure())]
                for _ in range(args.fixed_rounds):
                    for route, half in halves.items():
                        for measured in dict.fromkeys((route, "bare")):
                            envoy = gateway.envoys[0].pid
                            before, envoy_before = scheduled(service.pid), scheduled(envoy) if envoy else None
                            cpu = 1 if args.pin and route == "bare" else None
                            figures = await open_loop(
                                generator, url(ports, measured), half, args.fixed_seconds, headers, cpu
                            )
                            figures |= per_check(before, scheduled(service.pid), figures["requests"])
                            if envoy and envoy_before:
                                figures |= per_check(envoy_before, scheduled(envoy), figures["requests"], "envoy")
                            fixed.append((measured, half, figures))
                machine.append(("after", _stalls.measure()))
            finally:
                service.terminate()  # by PID, also when a run failed
                await service.wait()
    pinned = "; pinned: xgate authz on CPU 1, the rest on CPU 0" if args.pin else ""
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, Envoy --concurrency 1, direct responses{pinned}"
    )
    print(best_table(results, "bare"))
    bare_best = max(rps for rps, _ in results["bare"])
    for route, target in TARGETS.items():
        share = max(rps for rps, _ in results[route]) / bare_best
        print(f"target {route}: >= {target:.0%} of bare: {share:.1%} {'MET' if share >= target else 'MISSED'}")
    print(
        f"fixed rate: each policy route at half its best rps, then bare at that rate (the generator's and the "
        f"machine's own floor), and bare at half its own best rps (the same criterion met by Envoy alone, or not"
        f"{'; its generator on CPU 1, the others on CPU 0' if args.pin else ''}), "
        f"{args.fixed_rounds} rounds; open loop ({args.generator} generator), {args.fixed_seconds:g} s, 64 conns"
    )
    for route, rate, figures in fixed:
        print(
            f"{route:18} {rate:>6,.0f} rps: achieved {figures['achieved']:,.0f}  p50 {figures['p50_ms']:.2f} ms  "
            f"p90 {figures['p90_ms']:.2f} ms  p99 {figures['p99_ms']:.2f} ms  max {figures['max_ms']:.2f} ms  "
            f"failures {figures['failures']:.0f}  generator CPU {figures['cpu_s']:.2f} s"
        )
        if "envoy_cpu_ms" in figures:
            print(
                f"{'':18} Envoy per request: CPU {figures['envoy_cpu_ms']:.3f} ms, "
                f"{figures['envoy_switches']:.1f} context switches, {figures['envoy_wait_ms']:.3f} ms runnable but "
                f"waiting for its CPU"
            )
        if route != "bare":
            print(
                f"{'':18} xgate authz per request: CPU {figures['authz_cpu_ms']:.2f} ms, "
                f"{figures['authz_switches']:.1f} context switches, {figures['authz_wait_ms']:.2f} ms runnable "
                f"but waiting for its CPU (/proc schedstat, all threads)"
            )
    print("p99 per round (ms), and the median round:")
    for route, rate in dict.fromkeys((route, rate) for route, rate, _ in fixed):
        p99s = [figures["p99_ms"] for measured, at, figures in fixed if (measured, at) == (route, rate)]
        each = ", ".join(f"{p99:.2f}" for p99 in p99s)
        print(f"{route:18} {rate:>6,.0f} rps: {each}; median {statistics.median(p99s):.2f}")
    print(
        f"p99 criterion: a route at half its best rate, p99 <= bare's at that rate (same round) + {P99_MARGIN_MS:g} ms"
    )
    for route, rate in dict.fromkeys((route, rate) for route, rate, _ in fixed if route != "bare"):
        print(verdict(route, rate, fixed))
    print(f"machine (bench/_stalls.py, a busy thread per CPU for {_stalls.SECONDS:g} s, gaps):")
    for when, stalls in machine:
        print(f"  {when:>6}: {_stalls.line(stalls)}")
        print(f"  {'':>6}  {JOBS_TITLE}: {_stalls.jobs_line(stalls)}")
    return 0


def verdict(route: str, rate: float, fixed: list[tuple[str, float, dict[str, float]]]) -> str:
    """The criterion per round (the route's run and bare's right after it, at the same rate) and on the
    median rounds."""
    mine = [figures["p99_ms"] for measured, at, figures in fixed if (measured, at) == (route, rate)]
    bare = [figures["p99_ms"] for measured, at, figures in fixed if (measured, at) == ("bare", rate)]
    rounds = ", ".join(
        f"{p99:.2f} vs {floor:.2f} {'met' if p99 <= floor + P99_MARGIN_MS else 'missed'}"
        for p99, floor in zip(mine, bare, strict=True)
    )
    median, floor = statistics.median(mine), statistics.median(bare)
    met = "MET" if median <= floor + P99_MARGIN_MS else "MISSED"
    return f"{route:18} {rate:>6,.0f} rps: {rounds}; medians {median:.2f} vs {floor:.2f} + {P99_MARGIN_MS:g}: {met}"


async def start_authz(
    xds_port: int, port: int, http_port: int = 0, *, pin: bool = False, path: Path | None = None
) -> asyncio.subprocess.Process:
    """`xgate authz` configured by the control plane on `xds_port`, with the example policies importable (on
    CPU 1 alone with `pin`), answering HTTP checks on `http_port` too if given; returns once it serves."""
    paths = [str(EXAMPLES), str(path or ""), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    argv = [sys.executable, "-m", "xgate", "authz", "--xds", f"127.0.0.1:{xds_port}", "--listen", f"127.0.0.1:{port}"]
    if http_port:
        argv += ["--http-listen", f"127.0.0.1:{http_port}"]
    child = await asyncio.create_subprocess_exec(
        *argv, "--log-level", "warning", env=env, stdout=asyncio.subprocess.PIPE
    )
    if pin:
        os.sched_setaffinity(child.pid, {1})  # before it starts its threads, which inherit it
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 30)
    if b"ready" not in line:
        child.terminate()
        raise RuntimeError(f"xgate authz did not start: {line!r}")
    return child


def scheduled(pid: int) -> tuple[int, int, int]:
    """A process's threads' CPU time and run-queue wait (ns) and time slices, summed (/proc/PID/task/*/schedstat)."""
    totals = [0, 0, 0]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for index in range(3):
            totals[index] += int(fields[index])
    return totals[0], totals[1], totals[2]


def per_check(
    before: tuple[int, int, int], after: tuple[int, int, int], requests: float, who: str = "authz"
) -> dict[str, float]:
    """A process's CPU, run-queue wait (ms) and time slices per request between two `scheduled` readings."""
    cpu, wait, slices = (later - earlier for later, earlier in zip(after, before, strict=True))
    count = max(requests, 1.0)
    return {f"{who}_cpu_ms": cpu / 1e6 / count, f"{who}_wait_ms": wait / 1e6 / count, f"{who}_switches": slices / count}


async def open_loop(
    generator: list[str], url: str, rate: float, seconds: float, headers: list[str], cpu: int | None = None
) -> dict[str, float]:
    """One open-loop run of `generator` (`generator_argv`'s command) as a child process, not on this event loop
    (the control plane's), on CPU `cpu` if given: its figures, plus `cpu_s`, the child's user + system CPU
    time."""
    argv = [*generator, url, "--rate", f"{rate:.0f}", "--seconds", str(seconds), "--json"]
    argv += [item for header in headers for item in ("-H", header)]
    # The children reaped meanwhile are this one alone: Envoy and xgate authz run until the end.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    if cpu is not None:
        os.sched_setaffinity(child.pid, {cpu})  # before it has opened its connections
    out, _ = await asyncio.wait_for(child.communicate(), seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if child.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {child.returncode}")
    result: dict[str, float] = json.loads(out)
    result["cpu_s"] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return result


if __name__ == "__main__":
    parser = wrk_parser(__doc__)
    parser.add_argument("--fixed-seconds", type=float, default=10.0)
    parser.add_argument("--fixed-rounds", type=int, default=3, help="fixed-rate runs of each policy route and bare")
    parser.add_argument(
        "--fixed-routes",
        default=",".join(FIXED_ROUTES),
        help=f"comma-separated routes measured at half their best rate (default {','.join(FIXED_ROUTES)})",
    )
    parser.add_argument(
        "--distinct-tokens",
        type=int,
        default=0,
        metavar="N",
        help="wrk sends N different tokens in turn (more than 10,000: no verified-token cache holds them)",
    )
    parser.add_argument(
        "--pin", action="store_true", help="xgate authz alone on CPU 1, everything else on CPU 0 (as on its own host)"
    )
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="c",
        help="the fixed-rate part's open-loop generator: bench/openloop.c (default) or bench/_openloop.py",
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
