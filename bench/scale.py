"""Benchmark: a config of 50,000 routes: `xgate validate` (time, peak memory) and a running control plane's reloads.

Run from the repository: `.venv/bin/python bench/scale.py [--routes 50000] [--shapes plain,rich] [--json]`. See
bench/README.md. Two shapes of config, each in one file:
- plain: the propagation benchmarks' (`/svc-<n>/` prefixes over 4 upstreams, no plugins);
- rich: every feature on many routes: 1,000 upstreams (half health-checked), the routes over 5,000 hosts with a
  method and a header match, a canary on every 4th (its own fallback cluster), a global and a local limit on
  every 3rd, a JWT provider on every 5th, a Python policy on every 11th, and native dyeing (each route two Envoy
  routes).
Per shape: `xgate validate -f` as a child (wall time; peak RSS from the kernel's rusage), then `xgate controlplane
-f` (its own process): the first load, a save that edits one route (the incremental path) and a save that
edits an upstream (a full compile), each read from the control plane's own log line ("read to applied").
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import _stalls
from _processes import controlplane, memory_mb
from xgate.sources.revision import revision_of
from xgate.testing.gateway import write_atomic

SHAPES = ("plain", "rich")
_APPLIED = re.compile(r"applied revision (\w+): (.*) \(compile ([\d.]+) ms, read to applied ([\d.]+) ms\)")
TARGET_S, TARGET_MB = 10.0, 500


def config(shape: str, routes: int, probe: int = 0, pool_port: int = 9) -> str:
    """The config of `shape` with `routes` routes; `probe` edits one route, `pool_port` the first upstream."""
    if shape == "plain":
        lines = ["xgate: v1", "listeners:", "  - {name: bench, address: 127.0.0.1, port: 10000}", "upstreams:"]
        lines += [f"  - {{name: pool-{u}, endpoints: ['127.0.0.1:{pool_port if u == 0 else 9}']}}" for u in range(4)]
        lines += ["routes:", _probe(probe)]
        lines += [_route(n, f"{{path: {{prefix: /svc-{n}/}}}}", f"pool-{n % 4}", "") for n in range(routes - 1)]
        return "\n".join(lines) + "\n"
    jwks = json.dumps({"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI"}]})
    lines = [
        "xgate: v1",
        "plugins:",
        "  cors: {allow_origins: ['https://app.example.com']}",
        "  dyeing: {rules: [{stage: canary, header: {name: x-canary, exact: '1'}}]}",
        "  rate_limit: {service: '127.0.0.1:18003'}",
        f"  jwt: {{providers: [{{name: main, issuer: https://issuer.example.com, jwks: {jwks}}}]}}",
        "  policy: {policies: {admins: 'mypkg.policies:allow_admins'}, service: '127.0.0.1:18001'}",
        "listeners:",
        "  - {name: bench, address: 127.0.0.1, port: 10000}",
        "upstreams:",
    ]
    for u in range(1000):
        check = ", health_check: {path: /healthz, interval: 1s}" if u % 2 else ""
        lines.append(f"  - {{name: pool-{u}, endpoints: ['127.0.0.1:{pool_port if u == 0 else 9000 + u}']{check}}}")
    lines += ["routes:", _probe(probe)]
    for n in range(routes - 1):
        plugins = []
        if n % 3 == 0:
            plugins.append(f"rate_limit: {{global: {{requests: {100 + n % 7}, per: 1m}}, local: {{requests: 50}}}}")
        if n % 5 == 0:
            plugins.append("jwt: {provider: main}")
        if n % 11 == 0:
            plugins.append("policy: {name: admins}")
        extra = f", plugins: {{{', '.join(plugins)}}}" if plugins else ""
        if n % 4 == 0:
            extra += f", canary: {{stage: canary, upstream: pool-{(n | 1) % 1000}}}"
        path = f"path: {{prefix: /svc-{n}/}}"
        match = f"{{hosts: [h{n % 5000}.example.com], {path}, methods: [GET], headers: {HEADERS[n % 9]}}}"
        lines.append(_route(n, match, f"pool-{(n * 2) % 1000}", extra))
    return "\n".join(lines) + "\n"


HEADERS = [f"[{{name: x-t, exact: a{k}}}]" for k in range(9)]


def _probe(generation: int) -> str:
    answer = f"{{status: 200, body: p{generation}}}"
    return f"  - {{name: probe, match: {{path: {{exact: /probe}}}}, direct_response: {answer}}}"


def _route(n: int, match: str, upstream: str, extra: str) -> str:
    return f"  - {{name: svc-{n}, match: {match}, upstream: {upstream}{extra}}}"


def validate(path: Path) -> dict[str, Any]:
    """`xgate validate -f path` as a child: its exit code, wall seconds and peak RSS (the kernel's account)."""
    started = time.monotonic()
    argv = [sys.executable, "-m", "xgate", "validate", "-f", str(path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")  # to its end first: a full pipe would stall it
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    return {
        "exit": proc.returncode,
        "seconds": round(seconds, 2),
        "peak_mb": round(usage.ru_maxrss / 1024, 1),
        "output": output.strip(),
    }


def applied(log: Path, revision: str, timeout: float) -> dict[str, Any]:
    """The control plane's log line for `revision`: what it applied, its compile and read-to-applied ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for found in _APPLIED.finditer(log.read_text(errors="replace")):
            if found.group(1) == revision:
                return {
                    "what": found.group(2),
                    "compile_ms": float(found.group(3)),
                    "applied_ms": float(found.group(4)),
                }
        time.sleep(0.05)
    raise TimeoutError(f"revision {revision} was not applied within {timeout} s (see {log})")


def measure(shape: str, routes: int, work: Path) -> dict[str, Any]:
    path = work / f"{shape}.yaml"
    text = config(shape, routes)
    path.write_text(text)
    result: dict[str, Any] = {"shape": shape, "routes": routes, "config_mb": round(len(text) / 2**20, 1)}
    result["validate"] = validate(path)
    started = time.monotonic()
    with controlplane(["-f", str(path)], work, log_level="info") as plane:
        plane.wait(0, 600, revision_of(text))
        result["first_load_s"] = round(time.monotonic() - started, 2)
        result["first_load"] = applied(work / "controlplane.log", revision_of(text), 10)
        time.sleep(1.5)  # the deferred collect-and-freeze
        result["loaded_mb"] = memory_mb(plane.proc.pid)
        saves = {
            "one route": config(shape, routes, probe=1),
            "an upstream (full compile)": config(shape, routes, probe=1, pool_port=10),
        }
        for kind, edited in saves.items():
            write_atomic(path, edited)
            result[f"save {kind}"] = applied(work / "controlplane.log", revision_of(edited), 600)
        result["after_mb"] = memory_mb(plane.proc.pid)
    return result


def print_report(results: list[dict[str, Any]], machine: list[_stalls.Stalls], out: IO[str]) -> None:
    write = functools.partial(print, file=out)
    for r in results:
        v = r["validate"]
        ok = "ok" if v["exit"] == 0 and v["seconds"] <= TARGET_S and v["peak_mb"] <= TARGET_MB else "MISSED"
        last = v["output"].splitlines()[-1] if v["output"] else ""
        write(f"{r['shape']}: {r['routes']:,} routes, {r['config_mb']} MB of YAML")
        write(
            f"  xgate validate: {v['seconds']} s, peak {v['peak_mb']} MB ({TARGET_S:g} s, {TARGET_MB} MB: {ok}); {last}"
        )
        first, size = r["first_load"], r["loaded_mb"]
        write(
            f"  control plane: first load {r['first_load_s']} s (compile {first['compile_ms'] / 1000:.2f} s), "
            f"RSS {size['rss']} MB (peak {size['peak']} MB)"
        )
        for key in (key for key in r if key.startswith("save ")):
            save = r[key]
            took = f"read to applied {save['applied_ms']:.1f} ms (compile {save['compile_ms']:.1f} ms)"
            write(f"  {key}: {took}: {save['what']}")
        write(f"  RSS after the saves {r['after_mb']['rss']} MB (peak {r['after_mb']['peak']} MB)")
    write(f"machine: {_stalls.line(machine)}")


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--routes", type=int, default=50000)
    parser.add_argument("--shapes", type=lambda v: v.split(","), default=list(SHAPES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xgate-bench-scale-") as name:
        results = [measure(shape, args.routes, Path(name)) for shape in args.shapes]
    machine = _stalls.measure(1.0)
    if args.json:
        json.dump({"results": results, "machine_stalls": [stall.summary() for stall in machine]}, out, indent=2)
        out.write("\n")
    else:
        print_report(results, machine, out)
    return 0 if all(r["validate"]["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
