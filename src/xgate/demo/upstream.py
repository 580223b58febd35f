"""A tiny echo HTTP upstream on aiohttp, so a fresh `xgate up` answers requests at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

_NAME_KEY: web.AppKey[str] = web.AppKey("upstream_name", str)

# A delay route must not let one request pin a connection for minutes.
_MAX_DELAY_MS = 60_000


@dataclass
class DemoUpstream:
    """A running demo upstream; `stop()` closes its listener and open connections."""

    name: str
    host: str
    port: int
    _runner: web.AppRunner

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self._runner.cleanup()


def _headers(request: web.Request) -> dict[str, str]:
    """Lower-case name -> value; a header sent more than once shows all its values joined with ","."""
    joined: dict[str, str] = {}
    for key, value in request.headers.items():
        name = key.lower()
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    return joined


def _echo(request: web.Request, status: int = 200) -> web.Response:
    name = request.app[_NAME_KEY]
    body = {
        "upstream": name,
        "method": request.method,
        "path": request.path_qs,
        "headers": _headers(request),
    }
    # json.dumps + a prebuilt Response is cheaper than web.json_response's extra indirection.
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"x-upstream": name},
    )


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    """Echo each text message back prefixed with the upstream's name (`/ws`, for upgrade tests)."""
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        if message.type == web.WSMsgType.TEXT:
            await socket.send_str(f"{request.app[_NAME_KEY]}:{message.data}")
    return socket


async def _handle(request: web.Request) -> web.StreamResponse:
    if request.path == "/ws" and request.headers.get("upgrade", "").lower() == "websocket":
        return await _websocket(request)
    parts = request.path.split("/", 3)
    # parts: ["", "status"|"delay", "<n>", ...] for the special routes.
    if len(parts) >= 3 and parts[2].isdigit():
        if parts[1] == "status":
            code = int(parts[2])
            if 200 <= code <= 599:
                return _echo(request, status=code)
            return web.Response(status=400, text=f"status {code} out of range 200-599\n")
        if parts[1] == "delay":
            await asyncio.sleep(min(int(parts[2]), _MAX_DELAY_MS) / 1000)
    return _echo(request)


def _make_app(name: str) -> web.Application:
    app = web.Application()
    app[_NAME_KEY] = name
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


async def start_upstream(name: str, host: str = "127.0.0.1", port: int = 0) -> DemoUpstream:
    """Start the echo upstream on host:port (0 picks a free port) and return it once it listens.

    Errors: OSError when the address cannot be bound.
    Resources: the caller must `await upstream.stop()`.
    """
    runner = web.AppRunner(_make_app(name), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    server = site._server  # aiohttp exposes no public accessor for the bound sockets.
    assert isinstance(server, asyncio.base_events.Server)
    bound_port = next(
        sock.getsockname()[1] for sock in server.sockets if sock.family in (socket.AF_INET, socket.AF_INET6)
    )
    return DemoUpstream(name=name, host=host, port=bound_port, _runner=runner)


class Running(Protocol):
    """What the foreground runner needs of a started upstream (DemoUpstream, GrpcUpstream)."""

    port: int

    async def stop(self) -> None: ...


async def _serve_until_signal(start: Callable[[], Awaitable[Running]], label: str, host: str) -> None:
    upstream = await start()
    print(f"demo upstream {label} listening on {host}:{upstream.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await upstream.stop()


def run_until_signal(start: Callable[[], Awaitable[Running]], label: str, host: str) -> None:
    """Run the upstream `start()` starts in the foreground until SIGINT or SIGTERM, saying where it listens."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signal(start, label, host))


def run_upstream(name: str, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run the echo upstream in the foreground until SIGINT or SIGTERM (for `xgate demo-upstream`)."""
    run_until_signal(lambda: start_upstream(name, host, port), name, host)
