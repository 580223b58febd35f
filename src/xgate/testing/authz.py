"""`xgate authz` inside a test's event loop, on the gateway's own config, for tests of policies and of tokens
verified in Python."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from xgate.authz.config import run_authz


@contextlib.asynccontextmanager
async def run_authz_service(
    config_path: str | Path | None, port: int, *, ready_timeout: float = 10.0, status_port: int | None = None
) -> AsyncIterator[int]:
    """Serve ext_authz on 127.0.0.1:`port` (0: any; the port is yielded) following `config_path` until the block
    ends; with `status_port`, its GET /metrics on 127.0.0.1 there. Errors: TimeoutError when the service is not
    serving within `ready_timeout` seconds."""
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    status = ("127.0.0.1", status_port) if status_port is not None else None
    task = asyncio.create_task(
        run_authz(config_path, listen=("127.0.0.1", port), status=status, on_ready=ready.set_result, stop=stop)
    )
    try:
        bound = await asyncio.wait_for(asyncio.shield(ready), ready_timeout)
    except BaseException:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
    try:
        yield bound
    finally:
        stop.set()
        await task
