"""The operator views on the control plane's status port: /config_dump, /revisions and the /dashboard page."""

from __future__ import annotations

import asyncio
from importlib import resources as package_files

from aiohttp import web

from xgate.controlplane import ControlPlane
from xgate.discovery.dump import DumpError, choose, config_dump


def add_operator_routes(app: web.Application, plane: ControlPlane) -> None:
    """GET /config_dump[?node=NODE]: the resources last sent to that consumer (the only Envoy when no node is
    named), secrets redacted; 404 with {"error": ...} when there is no such consumer or several Envoys."""

    async def dump(request: web.Request) -> web.Response:
        try:
            proxy = choose(plane.cache.status.connected.values(), request.query.get("node") or None)
        except DumpError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response(await asyncio.to_thread(config_dump(proxy)))

    async def revisions(_request: web.Request) -> web.Response:
        return web.json_response(plane.cache.status.history.report())

    async def dashboard(_request: web.Request) -> web.Response:
        page = package_files.files("xgate").joinpath("dashboard.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/config_dump", dump)
    app.router.add_get("/revisions", revisions)  # newest first: each consumer's seconds to ACK, or its NACK
    app.router.add_get("/dashboard", dashboard)  # read-only: it GETs /status and /revisions every 2 s
