"""Benchmark: what the control plane and the services hold in memory, at the sizes issue 20 names.

Run from the repository: `.venv/bin/python bench/memory.py [--routes 10000] [--upstreams 1000] [--clients 100]
[--service-routes 50000] [--json]`. See bench/README.md. Every process is started here on loopback ports
chosen at run time and stopped by its PID; sizes are each process's own /proc/<pid>/status (VmRSS now, VmHWM
its peak so far).

1. The control plane (`xgate controlplane -f`, its own process) on `--routes` routes over `--upstreams`
   upstreams, alone, then with `--clients` ADS clients connected (each its own gRPC connection, subscribing
   and ACKing as an Envoy does: clusters and listeners, then the endpoints and route tables they name), then
   after one route's change reached all of them.
2. The services (`xgate ratelimit`, `authz`, `dyeing`), each its own process fed by a control plane serving
   `--service-routes` routes, each with a global limit (one resource per route for the rate-limit service;
   authz and dyeing get the policies, providers and settings, which do not grow with the routes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import _stalls
from _processes import controlplane, memory_mb, stop
from xgate.sources.revision import revision_of
from xgate.testing.gateway import write_atomic
from xgate.testing.services import run_service

ROOT = Path(__file__).absolute().parent.parent
TARGET_MB = 150


# -- configs ------------------------------------------------------------------------------------------------


def gateway_config(routes: int, upstreams: int, probe: int = 0, limits: bool = False) -> str:
    """`routes` routes (`/svc-<n>/` prefixes, the first a direct response whose body is `probe`) over `upstreams`
    upstreams; `limits`: each route with a global limit, and the services' plugin defaults (a policy, a
    Python-verified JWT provider, a dye rule only the dyeing service can run)."""
    lines = ["xgate: v1"]
    if limits:
        jwks = json.dumps({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI"}]})
        lines += [
            "plugins:",
            "  rate_limit: {service: '127.0.0.1:1'}",
            "  policy: {policies: {admins: 'xgate_example_policies:allow_admins'}, service: '127.0.0.1:1'}",
            f"  jwt: {{providers: [{{name: idp, verify: python, issuer: https://idp.example.com, jwks: {jwks}}}]}}",
            "  dyeing: {service: '127.0.0.1:1', rules: [{stage: internal, source: [10.0.0.0/8]}]}",
        ]
    lines += ["listeners:", "  - {name: bench, address: 127.0.0.1, port: 10000}", "upstreams:"]
    lines += [f"  - {{name: pool-{u}, endpoints: ['127.0.0.1:{1024 + u}']}}" for u in range(upstreams)]
    lines += [
        "routes:",
        f"  - {{name: probe, match: {{path: {{exact: /probe}}}}, direct_response: {{status: 200, body: p{probe}}}}}",
    ]
    limit = ", plugins: {rate_limit: {global: {requests: 100, per: 1m}}}" if limits else ""
    lines += [
        f"  - {{name: svc-{n}, match: {{path: {{prefix: /svc-{n}/}}}}, upstream: pool-{n % upstreams}{limit}}}"
        for n in range(routes - 1)
    ]
    return "\n".join(lines) + "\n"


# -- ADS clients (in a child: `--serve-clients N --xds PORT`) -----------------------------------------------


def serve_clients(count: int, port: int) -> None:
    """`count` ADS clients, each on its own connection, ACKing everything until SIGTERM."""
    from _ads_clients import run_clients

    asyncio.run(run_clients(count, port))


@contextmanager
def clients(count: int, port: int) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, __file__, "--serve-clients", str(count), "--xds", str(port)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        stop(proc)


# -- the two parts ------------------------------------------------------------------------------------------


def measure_controlplane(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    path = work / "gateway.yaml"
    text = gateway_config(args.routes, args.upstreams)
    path.write_text(text)
    started = time.monotonic()
    with controlplane(["-f", str(path)], work) as plane:
        plane.wait(0, 300, revision_of(text))
        loaded_s = time.monotonic() - started
        time.sleep(2)  # the collect-and-freeze after a full compile runs 0.5 s after it
        alone = memory_mb(plane.proc.pid)
        with clients(args.clients, plane.xds_port):
            synced_s = plane.wait(args.clients, 300, revision_of(text))
            time.sleep(1)
            connected = memory_mb(plane.proc.pid)
            text = gateway_config(args.routes, args.upstreams, probe=1)
            write_atomic(path, text)
            changed_s = plane.wait(args.clients, 300, revision_of(text))
            time.sleep(2)
            changed = memory_mb(plane.proc.pid)
    return {
        "routes": args.routes,
        "upstreams": args.upstreams,
        "clients": args.clients,
        "config_bytes": len(text),
        "load_s": round(loaded_s, 2),
        "clients_synced_s": round(synced_s, 2),
        "change_to_all_s": round(changed_s, 2),
        "alone_mb": alone,
        "with_clients_mb": connected,
        "after_change_mb": changed,
    }


async def _services(port: int, names: list[str]) -> dict[str, dict[str, float]]:
    sizes: dict[str, dict[str, float]] = {}
    for name in names:
        async with run_service(name, port, ready_timeout=300) as service:
            await asyncio.sleep(3)  # past its collect-and-freeze after the load
            sizes[name] = memory_mb(service.pid)
    return sizes


def measure_services(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    path = work / "services.yaml"
    text = gateway_config(args.service_routes, 10, limits=True)
    path.write_text(text)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "examples" / "policies"), *sys.path])
    sys.path.insert(0, str(ROOT / "examples" / "policies"))
    with controlplane(["-f", str(path)], work) as plane:
        plane.wait(0, 600, revision_of(text))
        sizes = asyncio.run(_services(plane.xds_port, ["ratelimit", "authz", "dyeing"]))
        plane_mb = memory_mb(plane.proc.pid)
    return {"routes": args.service_routes, "controlplane_mb": plane_mb, "services_mb": sizes}


# -- report -------------------------------------------------------------------------------------------------


def verdict(mb: float) -> str:
    return "ok" if mb <= TARGET_MB else "MISSED"


def print_report(result: dict[str, Any], out: IO[str]) -> None:
    plane = result.get("controlplane")
    if plane:
        print(
            f"control plane, {plane['routes']:,} routes, {plane['upstreams']:,} upstreams "
            f"({plane['config_bytes'] // 1024} KB): loaded in {plane['load_s']} s; {plane['clients']} ADS clients "
            f"in sync in {plane['clients_synced_s']} s; a change reached all in {plane['change_to_all_s']} s",
            file=out,
        )
        print(f"  {'when':<28} {'RSS MB':>8} {'peak MB':>8}  target <= {TARGET_MB} MB", file=out)
        for key, label in (
            ("alone_mb", "alone"),
            ("with_clients_mb", f"{plane['clients']} clients connected"),
            ("after_change_mb", "after a change"),
        ):
            size = plane[key]
            print(f"  {label:<28} {size['rss']:>8.1f} {size['peak']:>8.1f}  {verdict(size['rss'])}", file=out)
    services = result.get("services")
    if services:
        print(
            f"\nservices fed by a control plane serving {services['routes']:,} routes with a global limit each",
            file=out,
        )
        print(f"  {'service':<28} {'RSS MB':>8} {'peak MB':>8}  target <= {TARGET_MB} MB", file=out)
        for name, size in services["services_mb"].items():
            print(f"  {name:<28} {size['rss']:>8.1f} {size['peak']:>8.1f}  {verdict(size['rss'])}", file=out)
        size = services["controlplane_mb"]
        print(f"  {'(the control plane)':<28} {size['rss']:>8.1f} {size['peak']:>8.1f}", file=out)
    for when, stalls in result.get("machine_stalls", {}).items():
        print(f"\nmachine {when}: {'; '.join(stalls)}", file=out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--routes", type=int, default=10000)
    parser.add_argument("--upstreams", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--service-routes", type=int, default=50000, help="0 skips the services")
    parser.add_argument("--skip-controlplane", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--xds", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="xgate-bench-memory-") as name:
        work = Path(name)
        if not args.skip_controlplane:
            result["controlplane"] = measure_controlplane(args, work)
        if args.service_routes:
            result["services"] = measure_services(args, work)
    result["machine_stalls"] = {"after": [str(stall) for stall in _stalls.measure(1.0)]}
    return result


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    args = parse_args(argv)
    if args.serve_clients:
        serve_clients(args.serve_clients, args.xds)
        return 0
    result = run(args)
    if args.json:
        json.dump(result, out, indent=2)
        out.write("\n")
    else:
        print_report(result, out)
    sizes = [result["controlplane"]["with_clients_mb"]["rss"]] if "controlplane" in result else []
    sizes += [size["rss"] for size in result.get("services", {}).get("services_mb", {}).values()]
    return 0 if all(size <= TARGET_MB for size in sizes) else 1


if __name__ == "__main__":
    sys.exit(main())
