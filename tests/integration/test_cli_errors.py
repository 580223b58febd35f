"""What a user sees when a command is pointed at the wrong thing: one clear line and a non-zero exit, no traceback
(the CLI runs as a child process, as a user or a script runs it)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from xgate.testing import free_port, run_cli

pytestmark = pytest.mark.integration


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
async def not_xgate() -> AsyncIterator[str]:
    """A plain HTTP server that is not xgate: 404 under /404, an HTML page under /html, someone else's JSON
    under /json."""

    async def html(_request: web.Request) -> web.Response:
        return web.Response(text="<html><body>It works!</body></html>", content_type="text/html")

    async def other_json(_request: web.Request) -> web.Response:
        return web.json_response({"status": "UP", "config": "yes"})

    app = web.Application()
    app.router.add_get("/html/status", html)
    app.router.add_get("/json/status", other_json)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_status_url_that_is_not_a_url() -> None:
    code, out, err = await run_cli("status", "--url", "notaurl")
    assert code == 2 and out == ""
    assert one_line_error(err) == (
        "xgate status: 'notaurl' is not a URL of a control plane's status API (like http://127.0.0.1:18080)"
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/404", "/404/status answered HTTP 404: not an xgate control plane's status API"),
        ("/html", "/html/status answered, but not with JSON: not an xgate control plane's status API"),
        ("/json", "/json/status answered JSON that is not an xgate status report"),
    ],
)
async def test_status_url_of_a_server_that_is_not_xgate(not_xgate: str, path: str, expected: str) -> None:
    code, out, err = await run_cli("status", "--url", not_xgate + path)
    assert code == 2 and out == ""
    assert one_line_error(err) == f"xgate status: {not_xgate}{expected}"


async def test_status_url_of_a_server_that_does_not_speak_http() -> None:
    async def greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        code, _, err = await run_cli("status", "--url", f"http://127.0.0.1:{port}")
    assert code == 2
    assert one_line_error(err).startswith(f"xgate status: cannot reach the control plane at http://127.0.0.1:{port}: ")


async def test_status_url_where_nothing_listens() -> None:
    port = free_port()
    code, _, err = await run_cli("status", "--url", f"http://127.0.0.1:{port}")
    assert code == 2
    assert one_line_error(err) == (
        f"xgate status: cannot reach the control plane at http://127.0.0.1:{port}: [Errno 111] Connection refused"
    )


async def test_controlplane_on_a_taken_status_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_cli("controlplane", "--xds", "127.0.0.1:0", "--status", f"127.0.0.1:{port}")
    assert code == 2 and "ready" not in out
    assert "Traceback" not in err, err
    # The last line says why it stopped: the port, what it is for, and who holds it (this test's process).
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"xgate controlplane: 127.0.0.1:{port} (status API, --status) is in use by pid "), last
    assert last.endswith("; stop it or choose another port"), last
