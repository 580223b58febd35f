"""The operator views on the control plane's status port: GET /config_dump (what one consumer was sent)."""

from __future__ import annotations

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
        return web.json_response(config_dump(proxy))

    app.router.add_get("/config_dump", dump)
