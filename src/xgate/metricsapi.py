"""`GET /metrics` for the services (authz, rate limit, dyeing): their counters as JSON, on a port of their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web


class MetricsAddressError(OSError):
    """The address of GET /metrics cannot be bound (in use: another process of the same service?)."""


async def serve_metrics(host: str, port: int, read: Callable[[], dict[str, Any]]) -> web.AppRunner:
    """Answer GET /metrics with `read()` as JSON on `host:port` until `await runner.cleanup()`.

    Errors: MetricsAddressError when the address cannot be bound."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.json_response(read())

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise MetricsAddressError(
            f"cannot serve GET /metrics on {host}:{port} ({exc.strerror or exc}): processes sharing one gRPC port "
            "need a --status each, or --status off"
        ) from exc
    except BaseException:
        await runner.cleanup()
        raise
    return runner
