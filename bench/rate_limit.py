"""Throughput cost of rate limiting through a real Envoy, in one run, measured with wrk (Debian package) on
loopback: a bare route, a route with a local limit that is never hit, and a route with a global limit that is
never hit (each request asks xgate's rate-limit service, memory backend, over gRPC).

    .venv/bin/python bench/rate_limit.py [--seconds 5] [--connections 32] [--threads 1] [--rounds 2]

All routes forward to the same demo upstream. They are measured alternately, `--rounds` times each, on one
Envoy; the table shows each run, the best, and each route's share of the bare route's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from _wrk import best_table, have_wrk, wrk, wrk_parser
from xgate.demo.upstream import start_upstream
from xgate.testing import free_port, run_gateway, run_ratelimit_service

CONFIG = """
plugins:
  rate_limit: {{global: {{requests: 1000000000}}, service: "127.0.0.1:{service}"}}
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams: [{{name: app, endpoints: ["127.0.0.1:{upstream}"]}}]
routes:
  - {{name: bare, match: {{path: {{exact: /bare}}}}, upstream: app, plugins: {{rate_limit: false}}}}
  - name: local
    match: {{path: {{exact: /local}}}}
    upstream: app
    plugins:
      rate_limit: {{local: {{requests: 1000000000, per: 1s}}, service: "127.0.0.1:{service}"}}
  - name: global
    match: {{path: {{exact: /global}}}}
    upstream: app
    plugins:
      rate_limit: {{global: {{requests: 1000000000, per: 1s}}, service: "127.0.0.1:{service}"}}
"""


async def main(args: argparse.Namespace) -> int:
    if not have_wrk():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    port, service_port = free_port(), free_port()
    upstream = await start_upstream("bench")
    with tempfile.TemporaryDirectory(prefix="xgate-bench-rl-") as work:
        text = CONFIG.format(port=port, service=service_port, upstream=upstream.port)
        async with (
            run_gateway(text, Path(work) / "gw") as gateway,
            run_ratelimit_service(gateway.xds_port, service_port),
        ):
            results: dict[str, list[tuple[float, float]]] = {"bare": [], "local": [], "global": []}
            for _ in range(args.rounds):
                for route in results:
                    url = f"http://127.0.0.1:{port}/{route}"
                    measured = await asyncio.to_thread(wrk, url, args.seconds, args.connections, args.threads)
                    results[route].append(measured)
    await upstream.stop()
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, Envoy --concurrency 1, demo upstream (aiohttp)"
    )
    print(best_table(results, "bare"))
    print("target: local >= 90% of bare")
    return 0


if __name__ == "__main__":
    parser = wrk_parser(__doc__)
    sys.exit(asyncio.run(main(parser.parse_args())))
