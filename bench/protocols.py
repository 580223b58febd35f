"""What each client protocol costs through a real Envoy, in one run: HTTP/1.1, h2c, HTTPS/1.1, h2 over TLS and
gRPC unary, with rps and p50/p99 side by side with plain HTTP/1.1; then full TLS handshakes per second with and
without session resumption.

    flock /tmp/xgate-test.lock flock /tmp/xgate-bench.lock .venv/bin/python bench/protocols.py \\
        [--seconds 5] [--connections 32] [--streams 10]

Load: h2load (nghttp2-client: `apt-get install nghttp2-client`) for every protocol (`--h1` for HTTP/1.1), so
one client measures all of them; its per-request log gives the percentiles. The HTTP rows share one upstream,
nginx answering "ok" (the realistic upstream: the same work behind every row). The gRPC row goes to the demo
upstream's gRPC mode, Python grpc.aio: its own ceiling (about 2-3k calls/s on these machines) bounds the
row's rate, so read that row for the gateway's added latency, not for its rate. Handshakes: `openssl s_time`
(one client process doing handshakes back to back, `-new` full, `-reuse` resumed), TLS 1.2 and 1.3. The
machine's stall floor (bench/_stalls.py) is measured before and after and printed next to the p99s.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import wrappers_pb2

import _stalls
from xgate.demo.grpc import SERVICE, start_grpc_upstream
from xgate.testing import free_port, run_gateway, run_nginx
from xgate.testing.tls import TestCA

HOST = "bench.example.test"
CONFIG = """
secrets:
  - {{name: bench, cert_file: bench.pem, key_file: bench-key.pem}}
listeners:
  - {{name: plain, address: 127.0.0.1, port: {plain}}}
  - name: tls
    address: 127.0.0.1
    port: {tls}
    tls: {{certificates: [{{secret: bench}}]}}
upstreams:
  - {{name: nginx, endpoints: ["{nginx}"]}}
  - {{name: grpc, endpoints: ["127.0.0.1:{grpc}"], protocol: http2}}
routes:
  - {{name: grpc, match: {{grpc: {{service: {service}}}}}, upstream: grpc}}
  - {{name: web, upstream: nginx}}
"""
_RPS = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")
_DONE = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored")


def h2load(url: str, args: argparse.Namespace, extra: list[str], log: Path) -> tuple[float, float, float, str]:
    """(requests/s, p50 ms, p99 ms, failures) of one bounded h2load run."""
    argv = ["h2load", "-D", str(args.seconds), "-c", str(args.connections), "--log-file", str(log), *extra, url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 60, check=True)
    rps, done = _RPS.search(result.stdout), _DONE.search(result.stdout)
    assert rps and done, result.stdout
    latencies = sorted(int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line.strip())
    quantiles = statistics.quantiles(latencies, n=100)
    failed = int(done.group(3)) + int(done.group(4))
    return float(rps.group(1)), quantiles[49], quantiles[98], f"{failed} failed" if failed else ""


def s_time(port: int, ca: Path, reuse: bool, seconds: int, version: str) -> tuple[float, float]:
    """(handshakes per second, share resumed) of one `openssl s_time` client: full handshakes, or resuming its
    first session. TLS 1.3 sends its tickets after the handshake, so s_time only gets one by reading: the 1.3
    runs do one small GET per connection (`-www /`), both full and resumed; the 1.2 runs only handshake."""
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca), "-time", str(seconds)]
    argv += ["-reuse" if reuse else "-new", "-tls1_3" if version == "1.3" else "-tls1_2"]
    if version == "1.3":
        argv += ["-www", "/"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    total = re.search(r"(\d+) connections in ([\d.]+)s", result.stdout)
    assert total, result.stdout
    # s_time prints one character per connection: "r" resumed, "*" a full handshake.
    marks = "".join(line for line in result.stdout.splitlines() if line and set(line) <= {"r", "*"})
    resumed = marks.count("r") / len(marks) if marks else 0.0
    return int(total.group(1)) / float(total.group(2)), resumed  # wall-clock rate: user sec leaves Envoy out


async def main(args: argparse.Namespace) -> int:
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    before = _stalls.measure()
    plain, tls = free_port(), free_port()
    grpc_upstream = await start_grpc_upstream("bench-grpc")
    with tempfile.TemporaryDirectory(prefix="xgate-bench-protocols-") as temp:
        work = Path(temp)
        ca = TestCA("bench CA")
        ca.issue(HOST).write(work, "bench")
        (work / "ca.pem").write_text(ca.cert)
        message = wrappers_pb2.StringValue(value="bench").SerializeToString()
        (work / "grpc.bin").write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
        async with run_nginx(work / "nginx", "bench") as nginx:
            config = CONFIG.format(plain=plain, tls=tls, nginx=nginx.address, grpc=grpc_upstream.port, service=SERVICE)
            (work / "gateway.yaml").write_text(config)
            async with run_gateway(config, work):
                grpc_args = ["-m", str(args.streams), "-d", str(work / "grpc.bin")]
                grpc_args += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
                runs = {
                    "HTTP/1.1": (f"http://127.0.0.1:{plain}/", ["--h1"]),
                    "h2c": (f"http://127.0.0.1:{plain}/", ["-m", str(args.streams)]),
                    "HTTPS/1.1": (f"https://127.0.0.1:{tls}/", ["--h1"]),
                    "h2 (TLS)": (f"https://127.0.0.1:{tls}/", ["-m", str(args.streams)]),
                    "gRPC unary (h2c)": (f"http://127.0.0.1:{plain}/{SERVICE}/Unary", grpc_args),
                }
                rows = {}
                for name, (url, extra) in runs.items():
                    rows[name] = await asyncio.to_thread(h2load, url, args, extra, work / "h2load.log")
                handshakes = {
                    (version, kind): await asyncio.to_thread(
                        s_time, tls, work / "ca.pem", kind == "resumed", args.seconds, version
                    )
                    for version in ("1.2", "1.3")
                    for kind in ("full", "resumed")
                }
    await grpc_upstream.stop()
    after = _stalls.measure()
    base = rows["HTTP/1.1"][0]
    print(
        f"h2load -D {args.seconds} -c {args.connections} (h2: -m {args.streams} streams each), Envoy --concurrency 1,"
        " upstream nginx (gRPC: Python grpc.aio)"
    )
    print(f"{'protocol':18} {'rps':>9} {'of HTTP/1.1':>12} {'p50 ms':>8} {'p99 ms':>8}  notes")
    for name, (rps, p50, p99, notes) in rows.items():
        print(f"{name:18} {rps:>9,.0f} {rps / base:>12.0%} {p50:>8.2f} {p99:>8.2f}  {notes}")
    for version, note in (("1.2", "handshake only"), ("1.3", "with one GET each")):
        (full, _), (resumed, share) = handshakes[(version, "full")], handshakes[(version, "resumed")]
        print(
            f"TLS {version} handshakes/s (openssl s_time, 1 client, {note}): full {full:,.0f}, "
            f"resumed {resumed:,.0f} ({resumed / full:.1f}x; {share:.0%} of them resumed)"
        )
    print(f"stall floor before: {_stalls.line(before)}; {_stalls.jobs_line(before)}")
    print(f"stall floor after:  {_stalls.line(after)}; {_stalls.jobs_line(after)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="seconds per run (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="client connections (default 32)")
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams per h2 connection (default 10)")
    sys.exit(asyncio.run(main(parser.parse_args())))
