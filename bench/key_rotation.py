"""Benchmark: keep-alive load through a real Envoy while a native JWT provider's keys rotate, next to while a
listener-level setting changes, and with no change, in one run.

    flock -o /tmp/xgate-test.lock flock -o /tmp/xgate-bench.lock .venv/bin/python bench/key_rotation.py
        [--seconds 10] [--interval 0.5] [--connections 16] [--threads 1]

One gateway (`xgate.testing.run_gateway`: the control plane in this process, one Envoy, `--concurrency 1`,
draining as `xgate envoy` runs it: `--drain-time-s 1 --drain-strategy immediate`), one route answering a direct
response behind a native JWT provider whose keys come from a watched `jwks_file`. wrk (keep-alive, `-t1 -c16`)
sends the same valid token for `--seconds` per phase, four phases one after the other, each its own wrk run:
- idle: no change (the baseline);
- keys: every `--interval` s the jwks_file is rewritten (atomically), a second key added or removed; the token's
  key stays. jwt_authn's config travels over ECDS, so no listener should be rebuilt and nothing drained;
- listener: every `--interval` s the config file is rewritten with the listener's `stream_idle_timeout` toggled
  (300 s / 301 s: nothing a request of the run can meet), which is in the listener itself: Envoy updates the
  listener in place (new filter chains on the same socket), tells each old connection to close on its next
  response, and closes what is left when the drain time ends;
- listener-gradual: the same on a new Envoy started with Envoy's default drain strategy (gradual), the baseline
  that `--drain-strategy immediate` is measured against.
A change is counted once every Envoy ACKed it (the control plane's status); the next one is made `--interval` s
after that. Envoy's counters are read before and after each phase, and the CPU time Envoy and this process took.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
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
from _service_load import cpu_seconds
from _wrk import SOCKET_ERRORS, have_wrk, wrk_counts, wrk_run
from xgate.proxy.bootstrap import DRAIN_ARGS
from xgate.testing import free_port, run_gateway, write_atomic
from xgate.testing.gateway import Gateway, wait_for

ISSUER = "https://bench.test"
LISTENER = "public"
PHASES = ("idle", "keys", "listener")
# The last phase again, on an Envoy draining as Envoy does by default (gradual), for the baseline.
GRADUAL = "listener-gradual"
GRADUAL_ARGS = ("--drain-time-s", "1")
# Envoy's counters read around each phase, by their column: a listener rebuilt (in place: the same socket, the
# filter chains drained), jwt_authn's config reloaded over ECDS, and what happened to the connections (closed by
# the drain's Connection: close; closed by Envoy / by the client with a request in flight; opened).
COUNTERS = {
    "lst_mod": "listener_manager.listener_modified",
    "in_place": "listener_manager.listener_in_place_updated",
    "ecds": "extension_config_discovery.http_filter.envoy.filters.http.jwt_authn.config_reload",
    "drain_cls": f"http.{LISTENER}.downstream_cx_drain_close",
    "local_rq": f"http.{LISTENER}.downstream_cx_destroy_local_active_rq",
    "remote_rq": f"http.{LISTENER}.downstream_cx_destroy_remote_active_rq",
    "cx_new": f"http.{LISTENER}.downstream_cx_total",
}
FLOOR_MS = 1.0  # the job length whose p99 is printed next to each phase's p99 (Envoy's work per request is less)


def key_pair(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(alg="RS256", kid=kid)
    return key, jwk


def token(key: rsa.RSAPrivateKey, kid: str) -> str:
    claims = {"iss": ISSUER, "sub": "bench", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def config(port: int, jwks_file: Path, stream_idle_timeout: str) -> str:
    return json.dumps({
        "plugins": {"jwt": {"providers": [{"name": "main", "issuer": ISSUER, "jwks_file": str(jwks_file)}]}},
        "listeners": [{"name": LISTENER, "address": "127.0.0.1", "port": port,
                       "stream_idle_timeout": stream_idle_timeout}],
        "routes": [{"name": "jwt", "match": {"path": {"exact": "/jwt"}},
                    "direct_response": {"status": 200, "body": "ok"}, "plugins": {"jwt": {"provider": "main"}}}],
    })  # fmt: skip


def cpu_now(pid: int | None = None) -> float:
    """User + system CPU seconds of process `pid`, or of this one (the control plane's)."""
    if pid is not None:
        return cpu_seconds(pid)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def counters(gateway: Gateway) -> dict[str, int]:
    envoy = gateway.envoys[0]
    return {name: await envoy.stat(stat) for name, stat in COUNTERS.items()}


async def changes(gateway: Gateway, change: Any, seconds: float, interval: float) -> list[float]:
    """Make `change(i)` every `interval` s until `seconds` have passed; each one's seconds until every Envoy ACKed
    it (the control plane's status: a new applied revision, all in sync)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    took: list[float] = []
    index = 0
    while loop.time() + interval < end:
        await asyncio.sleep(interval)
        before = gateway.plane.report()["config"]["applied_revision"]
        started = loop.time()
        change(index)
        index += 1

        def applied(before: Any = before) -> bool:
            report = gateway.plane.report()
            return bool(report["config"]["applied_revision"] != before and report["all_in_sync"])

        await wait_for(applied, 10, f"change {index} to reach Envoy")
        took.append(loop.time() - started)
    return took


async def phase(
    gateway: Gateway, args: argparse.Namespace, url: str, header: str, change: Any | None
) -> dict[str, Any]:
    stalls = await asyncio.to_thread(_stalls.measure, args.stall_seconds)
    before = await counters(gateway)
    envoy = gateway.envoys[0]
    assert envoy.pid is not None
    cpu_before = cpu_now(envoy.pid), cpu_now()
    load = asyncio.create_task(asyncio.to_thread(wrk_run, url, args.seconds, args.connections, args.threads, [header]))
    took = await changes(gateway, change, args.seconds, args.interval) if change else []
    run = await load
    cpu = {"envoy": cpu_now(envoy.pid) - cpu_before[0], "plane": cpu_now() - cpu_before[1]}

    async def drained() -> bool:
        # A drain still running when wrk stops closes its connections later: count it in this phase.
        draining = ("listener_manager.total_listeners_draining", "listener_manager.total_filter_chains_draining")
        return not any([await envoy.stat(stat) for stat in draining])

    await wait_for(drained, 10, "Envoy's drains to end", interval=0.1)
    after = await counters(gateway)
    deltas = {name: after[name] - before[name] for name in COUNTERS}
    return {"run": run, "failed": wrk_counts(run.output), "deltas": deltas, "took": took, "stalls": stalls, "cpu": cpu}


async def main(args: argparse.Namespace) -> int:
    if not have_wrk():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    key, kept = key_pair("kept")
    _, extra = key_pair("extra")
    header = f"Authorization: Bearer {token(key, 'kept')}"
    port = free_port()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="xgate-bench-keys-") as work:
        jwks = Path(work) / "jwks.json"
        write_atomic(jwks, json.dumps({"keys": [kept]}))
        async with run_gateway(config(port, jwks, "300s"), Path(work) / "gw") as gateway:
            assert gateway.config_path is not None
            config_path = gateway.config_path
            url = f"http://127.0.0.1:{port}/jwt"

            def rotate(index: int) -> None:
                write_atomic(jwks, json.dumps({"keys": [kept, extra] if index % 2 == 0 else [kept]}))

            rebuilt = itertools.count(1)  # across both listener phases: each write must differ from the last

            def rebuild(index: int) -> None:
                write_atomic(config_path, config(port, jwks, "301s" if next(rebuilt) % 2 else "300s"))

            for name, change in zip(PHASES, (None, rotate, rebuild), strict=True):
                results[name] = await phase(gateway, args, url, header, change)
            await gateway.envoys.pop().stop()
            await gateway.start_envoy(drain_args=GRADUAL_ARGS)
            results[GRADUAL] = await phase(gateway, args, url, header, rebuild)
    report(args, results)
    return 0


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s per phase, keep-alive, one valid RS256 token; "
        f"Envoy --concurrency 1 {' '.join(DRAIN_ARGS)} (as xgate envoy runs it; {GRADUAL}: "
        f"{' '.join(GRADUAL_ARGS)}, Envoy's default strategy); a change every {args.interval:g} s"
    )
    head = (
        f"{'phase':16} {'changes':>7} {'ACK p50 ms':>10} {'requests':>9} {'rps':>7} {'non-2xx':>7} "
        f"{'conn/read/wr/tmo':>16} {'p50 ms':>7} {'p99 ms':>7} {f'floor {FLOOR_MS:g} ms p99':>16} "
        f"{'CPU s envoy/plane':>17} "
    )
    print(head + " ".join(f"{name:>9}" for name in COUNTERS))
    for name, result in results.items():
        run, failed, deltas, took = result["run"], result["failed"], result["deltas"], result["took"]
        ack = f"{statistics.median(took) * 1e3:.0f}" if took else "-"
        sockets = "/".join(str(failed[kind]) for kind in SOCKET_ERRORS)
        floor = max(stall.job(FLOOR_MS)[1] for stall in result["stalls"])
        print(
            f"{name:16} {len(took):>7} {ack:>10} {failed['requests']:>9,} {run.rps:>7,.0f} {failed['non_2xx']:>7} "
            f"{sockets:>16} {run.p50_ms:>7.2f} {run.p99_ms:>7.2f} {floor:>16.1f} "
            f"{result['cpu']['envoy']:>8.2f}/{result['cpu']['plane']:<8.2f} "
            + " ".join(f"{deltas[counter]:>9}" for counter in COUNTERS)
        )
    print(
        "changes: made and ACKed by every Envoy (ACK p50: the write -> the control plane sees them in sync); "
        "non-2xx, socket errors (connect/read/write/timeout), p50, p99: wrk's; floor: the worst CPU's p99 for a "
        f"{FLOOR_MS:g} ms job, bench/_stalls.py run just before the phase; CPU s: Envoy's and this process's (the "
        "control plane, in it) user + system CPU time during wrk's run; then Envoy's counters over the phase "
        "(read once no listener or filter chain drains any more):"
    )
    for name, stat in COUNTERS.items():
        print(f"  {name:>9}: {stat}")
    print(f"machine (bench/_stalls.py, a busy thread per CPU for {args.stall_seconds:g} s before each phase, gaps):")
    for name, result in results.items():
        print(f"  {name:>8}: {_stalls.line(result['stalls'])}")
        print(f"  {'':>8}  {JOBS_TITLE}: {_stalls.jobs_line(result['stalls'])}")
    # Last, short: bench/all.py puts a benchmark's last three lines in its table, 150 characters of them.
    for name, result in results.items():
        failed = result["failed"]
        lost = failed["non_2xx"] + sum(failed[kind] for kind in SOCKET_ERRORS)
        print(f"{name}: {len(result['took'])} changes, {result['deltas']['lst_mod']} rebuilt, {lost} failed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="seconds per phase (default 10; 4 phases)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between changes (default 0.5)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections, kept alive (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--stall-seconds", type=float, default=1.5, help="bench/_stalls.py probe before each phase (default 1.5)"
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
