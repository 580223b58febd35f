"""Processes the scale benchmarks start and stop by PID: the control plane as `xgate controlplane`, a real Envoy
following it, and their sizes; and the bootstrap of a static Envoy, the origin several benchmarks answer from.

Unlike _harness.py's control plane child (which reports timestamps from hooks), these run the product as
deployed; the benchmarks that use them (memory.py, vs_nginx.py) time from outside or read /proc.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from xgate.proxy.bootstrap import DRAIN_ARGS, build_bootstrap
from xgate.proxy.process import EnvoyProcess
from xgate.supervisor import die_with_parent

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}  # fmt: skip
OK = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}  # any path
_READY = re.compile(r"ready: xds [^:\s]+:(\d+) status http://[^:\s]+:(\d+)/status")


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (the peak so far) of a process, in MB, and of the RSS what is the process's
    own (RssAnon) and what are mapped files' pages (RssFile: the Python, gRPC and protobuf libraries' code, shared
    with every process that maps them)."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            found[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss": found["VmRSS"], "peak": found["VmHWM"], "anon": found["RssAnon"], "file": found["RssFile"]}


def stop(proc: subprocess.Popen[Any], signum: int = signal.SIGTERM, grace: float = 10) -> None:
    """Signal a child this benchmark started (Popen signals its own PID), kill it after `grace` seconds."""
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ControlPlane:
    """`xgate controlplane` (`args`: `-f FILE` and/or `--etcd H:P`) as a child on ephemeral ports."""

    def __init__(self, args: Sequence[str], log: Path, log_level: str = "warning") -> None:
        self._log = log.open("wb")
        argv = [sys.executable, "-m", "xgate", "controlplane", *args, "--xds", "127.0.0.1:0"]
        argv += ["--status", "127.0.0.1:0", "--log-level", log_level]
        self.proc = subprocess.Popen(die_with_parent(argv), stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = _READY.search(line)
        if found is None:
            self.stop()
            raise RuntimeError(f"the control plane did not start: {line!r} (see {log})")
        self.xds_port, self.status_port = int(found.group(1)), int(found.group(2))

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status", timeout=10) as response:
            report: dict[str, Any] = json.load(response)
            return report

    def wait(self, proxies: int, timeout: float, revision: str | None = None) -> float:
        """Until a revision (`revision`, if given) is applied and `proxies` Envoys or clients hold it; seconds."""
        started = time.monotonic()
        while True:
            report = self.status()
            applied = report["config"]["applied_revision"]
            served = applied and (revision is None or applied == revision)
            if served and (proxies == 0 or (len(report["proxies"]) >= proxies and report["all_in_sync"])):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"revision {revision or '(any)'} did not reach {proxies} clients in {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        stop(self.proc)
        self._log.close()


@contextlib.contextmanager
def controlplane(args: Sequence[str], work: Path, log_level: str = "warning") -> Iterator[ControlPlane]:
    plane = ControlPlane(args, work / "controlplane.log", log_level)
    try:
        yield plane
    finally:
        plane.stop()


@contextlib.asynccontextmanager
async def envoy(xds_port: int, work: Path, name: str = "envoy") -> AsyncIterator[EnvoyProcess]:
    """A real Envoy (`--concurrency 1`) bootstrapped to the control plane on `xds_port`, until the block ends."""
    bootstrap = build_bootstrap(node_id=name, node_cluster="bench", xds_servers=[("127.0.0.1", xds_port)], admin_port=0)
    with (work / f"{name}.log").open("wb") as log:
        process = EnvoyProcess(bootstrap, work / name, concurrency=1, output=log, extra_args=list(DRAIN_ARGS))
        await process.start()
        try:
            await process.wait_ready(120)
            yield process
        finally:
            await process.stop()


def static_listener(name: str, port: int, routes: list[dict[str, Any]], **manager: Any) -> dict[str, Any]:
    """A static Envoy's listener on 127.0.0.1:`port`: one virtual host, any domain, `routes`; `manager` adds fields
    to its HttpConnectionManager (codec_type, access_log)."""
    config = {
        "@type": HCM,
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
        "http_filters": [ROUTER],
        **manager,
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": config}]}],
    }  # fmt: skip


def static_bootstrap(listeners: list[dict[str, Any]]) -> dict[str, Any]:
    """A static Envoy (no xDS) serving `listeners`, its admin on a port the kernel picks."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners},
    }
