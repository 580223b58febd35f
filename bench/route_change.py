"""Benchmark: the control plane's CPU work for one route change, in this process, without etcd, Envoy or gRPC.

Run from the repository: `.venv/bin/python bench/route_change.py [--routes 100,10000] [--changes 300]`.

Per size: a config of N routes (as etcd_propagation.py's: `/svc-<n>/` prefixes to 4 upstreams) compiled in
full, then `--changes` edits of one route's direct response, each taken through the fast path the running
control plane takes: `IncrementalCompiler.apply` (check, translate the route, re-join the table), the snapshot
(`SnapshotCache.update`: serialize, version, pack), one proxy's ADS responses (`AdsStream.responses`) and their
bytes (`Response.wire`). The full compile of the same config is timed alongside, as the baseline that the fast
path avoids. Figures are p50/p99 in ms. The loop runs hot (the same objects every time), so a running control
plane, whose caches are cold by the next change, takes 2-3 times longer for the same work; the etcd benchmark
measures that.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from _harness import percentile
from xgate.config.load import parse_document
from xgate.config.schema import Route
from xgate.discovery import SnapshotCache, typeurls
from xgate.discovery.status import ProxyStatus
from xgate.discovery.stream import AdsStream
from xgate.incremental import IncrementalCompiler
from xgate.pipeline import compile_config

STAGES = ("apply", "snapshot", "responses", "wire")
UPSTREAMS = 4


def document(routes: int) -> str:
    return json.dumps({
        "listeners": [{"name": "bench", "address": "127.0.0.1", "port": 10000}],
        "upstreams": [{"name": f"pool-{u}", "endpoints": ["127.0.0.1:9"]} for u in range(UPSTREAMS)],
        "routes": [
            {"name": f"svc-{n}", "match": {"path": {"prefix": f"/svc-{n}/"}}, "upstream": f"pool-{n % UPSTREAMS}"}
            for n in range(routes)
        ],
    })  # fmt: skip


def measure(routes: int, changes: int) -> dict[str, Any]:
    config = parse_document(document(routes), "bench")
    full: list[float] = []
    for revision in range(3):
        started = time.perf_counter()
        compiled = compile_config(config, str(revision))
        full.append(time.perf_counter() - started)
    incremental = IncrementalCompiler()
    incremental.reset(config, compiled.ir, compiled.context, compiled.resources)
    cache = SnapshotCache()
    cache.update(compiled.resources, "0")
    assert cache.snapshot is not None
    stream = AdsStream(ProxyStatus(stream_id=1, peer="bench", connected_at=0.0))
    for type_url in typeurls.PUSH_ORDER:
        names = list(cache.snapshot.resources.get(type_url, {})) if type_url == typeurls.ROUTE else []
        stream.on_request(discovery_v3.DiscoveryRequest(type_url=type_url, resource_names=names), cache.snapshot)
    while stream.responses(cache.snapshot):  # the first push, then the endpoints sent again after the clusters
        pass
    gc.collect()
    gc.freeze()  # as the control plane does after a full compile
    times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for index in range(changes):
        body = {"status": 200, "body": f"gen-{index}"}
        route = Route.model_validate(
            {"name": "svc-5", "match": {"path": {"prefix": "/svc-5/"}}, "direct_response": body}
        )
        t0 = time.perf_counter()
        result = incremental.apply(config, {"svc-5": route})
        assert result is not None, "the edit must take the fast path"
        t1 = time.perf_counter()
        snapshot = cache.update(result[0], str(index + 1))
        t2 = time.perf_counter()
        responses = stream.responses(snapshot)
        t3 = time.perf_counter()
        wires = [response.wire() for response in responses]
        t4 = time.perf_counter()
        assert len(wires) == 1 and f"gen-{index}".encode() in wires[0], "one RDS response, with the new body"
        for stage, start, end in zip(STAGES, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=True):
            times[stage].append(end - start)
    totals = [sum(parts) for parts in zip(*times.values(), strict=True)]
    figures = {stage: _dist(values) for stage, values in times.items()}
    return {"routes": routes, "full_compile": _dist(full), "change": _dist(totals), **figures}


def _dist(seconds: list[float]) -> dict[str, float]:
    return {"p50": percentile(seconds, 50) * 1e3, "p99": percentile(seconds, 99) * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", default="100,10000", help="comma-separated sizes (default 100,10000)")
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(int(size), args.changes) for size in args.routes.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"one route edit through the fast path, {args.changes} changes per size, in-process; p50/p99 ms")
    columns = ("full_compile", "change", *STAGES)
    print(f"{'routes':>6} | " + " ".join(f"{column:>15}" for column in columns))
    for result in results:
        cells = [f"{result[column]['p50']:.3f}/{result[column]['p99']:.3f}" for column in columns]
        print(f"{result['routes']:>6} | " + " ".join(f"{cell:>15}" for cell in cells))
    print(
        "full_compile = the baseline: the whole config compiled (3 times); change = apply + snapshot + responses + wire"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
