"""`GET /metrics` for the services (rate limit, dyeing): their counters as JSON, on a port of their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web


async def serve_metrics(host: str, port: int, read: Callable[[], dict[str, Any]]) -> web.AppRunner:
    """Answer GET /metrics with `read()` as JSON on `host:port` until `await runner.cleanup()`.

    Errors: OSError when the address cannot be bound."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.json_response(read())

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
