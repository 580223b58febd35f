"""`xgate dyeing` as its own process, on the gateway's own config, for tests of dye rules that need the service.

Its own process, as deployed: in the test's event loop it would share one thread with the test's clients, and
under load Envoy's message timeout would pass requests on undyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from xgate.testing.gateway import free_port

_READY = b"dyeing ready"


@contextlib.asynccontextmanager
async def run_dyeing_service(config_path: str | Path, port: int, *, ready_timeout: float = 20.0) -> AsyncIterator[int]:
    """Serve ext_proc on 127.0.0.1:`port` following `config_path` until the block ends, then stop the process
    (by its PID); yields the port of its GET /metrics. Errors: TimeoutError when it is not serving within
    `ready_timeout` seconds, RuntimeError when it exits before."""
    status = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xgate", "dyeing", "-f", str(config_path), "--listen", f"127.0.0.1:{port}",
        "--status", f"127.0.0.1:{status}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        async with asyncio.timeout(ready_timeout):
            while _READY not in (line := await process.stdout.readline()):
                if not line:
                    raise RuntimeError(f"xgate dyeing exited with {await process.wait()} before it was ready")
        drain = asyncio.create_task(process.stdout.read())  # a full pipe would stall the service
        yield status
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        if drain is not None:
            drain.cancel()
