"""xgate's services (authz, dyeing, ratelimit) as their own processes, configured by a test's control plane.

One shape for the three: `async with run_<service>_service(xds_port, port) as service:` starts `xgate <service>`
pointed at the control plane on 127.0.0.1:`xds_port`, serving gRPC on 127.0.0.1:`port` (the port the config's
plugin defaults name; 0: any), and yields a `ServiceProcess` once it has its first config. Their own processes,
as deployed: in the test's event loop they would share one thread with the test's clients, and under load
Envoy's timeouts would pass requests on undyed or unlimited. The child sees the test's sys.path, so policies
the test put on it import there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

_READY = re.compile(rb"xgate (\w+) ready: grpc [^:\s]+:(\d+)(?: status http://[^:\s]+:(\d+))?")


@dataclass(frozen=True)
class ServiceProcess:
    """A running service: its gRPC port, the port of its GET /metrics, /healthz and /readyz, its PID."""

    name: str
    port: int
    status_port: int
    pid: int

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}/metrics"


@contextlib.asynccontextmanager
async def run_service(
    name: str, xds_port: int, port: int = 0, *, args: Sequence[str] = (), ready_timeout: float = 20.0
) -> AsyncIterator[ServiceProcess]:
    """`xgate <name> --xds 127.0.0.1:<xds_port> --listen 127.0.0.1:<port> --status 127.0.0.1:0 <args>` until the
    block ends, then SIGTERM (by its PID). Errors: TimeoutError when it has no config within `ready_timeout`
    seconds (is the control plane up?), RuntimeError when it exits before."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xgate", name, "--xds", f"127.0.0.1:{xds_port}", "--listen", f"127.0.0.1:{port}",
        "--status", "127.0.0.1:0", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    drain: asyncio.Task[None] | None = None
    output: list[bytes] = []
    try:
        try:
            async with asyncio.timeout(ready_timeout):
                while (found := _READY.search(line := await process.stdout.readline())) is None:
                    output.append(line)
                    if not line:
                        tail = b"".join(output[-20:]).decode(errors="replace")
                        raise RuntimeError(f"xgate {name} exited with {await process.wait()} before ready:\n{tail}")
        except TimeoutError:
            tail = b"".join(output[-20:]).decode(errors="replace")
            raise TimeoutError(f"xgate {name} had no config after {ready_timeout} s:\n{tail}") from None
        drain = asyncio.create_task(_drain(process.stdout))  # a full pipe would stall the service
        yield ServiceProcess(name, int(found.group(2)), int(found.group(3) or 0), process.pid)
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        if drain is not None:
            drain.cancel()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


def run_authz_service(
    xds_port: int, port: int = 0, *, args: Sequence[str] = (), ready_timeout: float = 20.0
) -> contextlib.AbstractAsyncContextManager[ServiceProcess]:
    """`xgate authz` (Python policies, `verify: python` providers); see `run_service`."""
    return run_service("authz", xds_port, port, args=args, ready_timeout=ready_timeout)


def run_dyeing_service(
    xds_port: int, port: int = 0, *, args: Sequence[str] = (), ready_timeout: float = 20.0
) -> contextlib.AbstractAsyncContextManager[ServiceProcess]:
    """`xgate dyeing` (the dye rules Envoy cannot run); see `run_service`."""
    return run_service("dyeing", xds_port, port, args=args, ready_timeout=ready_timeout)


def run_ratelimit_service(
    xds_port: int, port: int = 0, *, args: Sequence[str] = (), ready_timeout: float = 20.0
) -> contextlib.AbstractAsyncContextManager[ServiceProcess]:
    """`xgate ratelimit` (global limits; `args=["--redis", url]` for shared counters); see `run_service`."""
    return run_service("ratelimit", xds_port, port, args=args, ready_timeout=ready_timeout)
