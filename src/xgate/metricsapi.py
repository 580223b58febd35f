"""`GET /metrics` for the services (authz, rate limit, dyeing) on a port of their own, and the handler the
control plane's status API uses for the same path.

One path, two forms: Prometheus' text format (or OpenMetrics) when the client asks for it, as scrapers do
(`Accept: text/plain` or `application/openmetrics-text`, or `?format=prometheus`), and the counters as JSON
otherwise (curl, a browser, the tests). Both are read from the same counters at request time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

Families = Callable[[], Iterable[Metric]]


class MetricsAddressError(OSError):
    """The address of GET /metrics cannot be bound (in use: another process of the same service?)."""


class _Read(Collector):
    def __init__(self, families: Families) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families())


def counters(name: str, documentation: str, labels: Sequence[str], counts: Mapping[str, Any]) -> CounterMetricFamily:
    """A counter family (`name`_total) from nested counts: {a: {b: n}} with labels (la, lb) is n{la=a, lb=b}."""
    family = CounterMetricFamily(name, documentation, labels=list(labels))

    def add(values: list[str], node: Any) -> None:
        if isinstance(node, Mapping):
            for key, inner in node.items():
                add([*values, str(key)], inner)
        else:
            family.add_metric(values, node)

    add([], counts)
    return family


def metrics_handler(
    read: Callable[[], dict[str, Any]], families: Families
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The GET /metrics handler: `families()` in Prometheus' format for scrapers, `read()` as JSON otherwise."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Read(families))

    async def metrics(request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "")
        if "text/plain" in accept or "openmetrics" in accept or request.query.get("format") == "prometheus":
            encoder, content_type = choose_encoder(accept)
            return web.Response(body=encoder(registry), headers={"Content-Type": content_type})
        return web.json_response(read())

    return metrics


async def serve_metrics(
    host: str,
    port: int,
    read: Callable[[], dict[str, Any]],
    families: Families,
    ready: Callable[[], bool] | None = None,
) -> tuple[web.AppRunner, int]:
    """Answer GET /metrics (see the module), GET /healthz (200 while the process runs) and GET /readyz (200 once
    `ready()` says so, else 503) on `host:port` until `await runner.cleanup()`; returns the runner and the port
    bound (`port` 0: any).

    Errors: MetricsAddressError when the address cannot be bound."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(read, families))

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_request: web.Request) -> web.Response:
        is_ready = ready() if ready is not None else True
        return web.json_response({"ready": is_ready}, status=200 if is_ready else 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
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
    addresses = runner.addresses  # aiohttp has no public getter for the bound port; the runner's addresses hold it
    return runner, int(addresses[0][1]) if addresses else port
