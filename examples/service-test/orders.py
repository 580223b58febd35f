"""A small service of a team that puts it behind xgate: orders, stored in memory.

GET /orders lists them; POST /orders (JSON {"item": ...}) adds one on behalf of the caller, whom the gateway
names in `x-user` (a claim of the verified token). It trusts the gateway for authentication and authorization,
so it keeps a log of the requests it got: the tests check what the gateway let through.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OrdersService:
    """The service on `host`:`port` (0: any free port) in a thread of this process, until `stop()`."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.orders: list[dict[str, Any]] = []
        self.seen: list[dict[str, str]] = []  # the headers of every request that reached the service
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.seen.append(dict(self.headers))
                self._answer(200, {"orders": service.orders})

            def do_POST(self) -> None:
                service.seen.append(dict(self.headers))
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                order = {"id": len(service.orders) + 1, "item": body.get("item"), "by": self.headers.get("x-user")}
                service.orders.append(order)
                self._answer(201, order)

            def _answer(self, status: int, data: Any) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet tests

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
