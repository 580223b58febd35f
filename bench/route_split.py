"""Benchmark: how long a real Envoy takes to apply a one-route change at 10,000 routes, for each way Envoy lets a
route table be delivered: one RouteConfiguration (RDS, what xgate sends), virtual hosts apart (VHDS, on delta
ADS), or scoped route configurations (SRDS: one RouteConfiguration per scope, chosen by a request header).

Run from the repository, with both locks held:
`flock /tmp/xgate-test.lock flock /tmp/xgate-bench.lock .venv/bin/python bench/route_split.py [--routes 10000]
[--hosts 100] [--changes 30] [--json]`. See bench/README.md for the method.

A small delta ADS server of its own (here, not xgate's: VHDS names resources by namespace, which xgate's
streams do not serve) holds the route resources; the Envoy has one static listener whose connection manager
takes its routes over ADS in the form under test. Each change edits the direct response of `/probe`, which
lives in the first host (or scope), and the server re-sends only the resource that holds it: the whole table
(`one`, `hosts`), one virtual host (`vhds`) or one scope's table (`srds`). Timed per change: the response
written -> Envoy's ACK (Envoy ACKs once it applied the update on its main thread) and -> the first request
answered with the new body (the workers have the new table).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.route.v3 import route_components_pb2 as rc_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.config.route.v3 import scoped_route_pb2 as scoped_v3
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3
from google.protobuf import any_pb2
from google.protobuf.message import Message

import _stalls
from _harness import percentile
from xgate.discovery.server import ADS_SERVICE
from xgate.proxy.process import EnvoyProcess
from xgate.testing.gateway import free_port

MODES = ("one", "hosts", "vhds", "srds")
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
VHOST = "type.googleapis.com/envoy.config.route.v3.VirtualHost"
SCOPE = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def host(index: int) -> str:
    return f"host-{index}"


def routes(first: int, count: int, generation: int | None) -> list[rc_v3.Route]:
    """`count` prefix routes (direct responses), after the probe when `generation` is given."""
    made = []
    if generation is not None:
        made.append(_route("/probe", f"gen-{generation}", exact=True))
    made += [_route(f"/svc-{n}/", f"svc-{n}") for n in range(first, first + count)]
    return made


def _route(path: str, body: str, exact: bool = False) -> rc_v3.Route:
    match = rc_v3.RouteMatch(path=path) if exact else rc_v3.RouteMatch(prefix=path)
    action = rc_v3.DirectResponseAction(status=200, body={"inline_string": body})
    return rc_v3.Route(name=path, match=match, direct_response=action)


@dataclass
class Layout:
    """The resources of one mode, and which one a change of the probe re-sends."""

    mode: str
    total: int
    hosts: int
    resources: dict[str, dict[str, Message]] = field(default_factory=dict)

    def build(self, generation: int) -> str:
        """(Re)build every resource for probe generation `generation`; return the type URL of what changed."""
        per_host = self.total // self.hosts
        if self.mode == "one":
            vhost = rc_v3.VirtualHost(name="all", domains=["*"], routes=routes(0, self.total - 1, generation))
            self.resources[ROUTE] = {"rc": route_v3.RouteConfiguration(name="rc", virtual_hosts=[vhost])}
            return ROUTE
        vhosts = [
            rc_v3.VirtualHost(
                name=host(h),
                domains=[host(h)],
                routes=routes(h * per_host, per_host - (h == 0), generation if h == 0 else None),
            )
            for h in range(self.hosts)
        ]
        if self.mode == "hosts":
            self.resources[ROUTE] = {"rc": route_v3.RouteConfiguration(name="rc", virtual_hosts=vhosts)}
            return ROUTE
        if self.mode == "vhds":
            vhds = route_v3.Vhds(config_source={"ads": {}, "resource_api_version": "V3"})
            self.resources[ROUTE] = {"rc": route_v3.RouteConfiguration(name="rc", vhds=vhds)}
            # VHDS resources are named <route configuration>/<virtual host> (Envoy matches by namespace).
            self.resources[VHOST] = {f"rc/{v.name}": _named(v, f"rc/{v.name}") for v in vhosts}
            return VHOST
        self.resources[ROUTE] = {
            f"rc-{h}": route_v3.RouteConfiguration(
                name=f"rc-{h}", virtual_hosts=[rc_v3.VirtualHost(name="all", domains=["*"], routes=list(v.routes))]
            )
            for h, v in enumerate(vhosts)
        }
        self.resources[SCOPE] = {
            f"scope-{h}": scoped_v3.ScopedRouteConfiguration(
                name=f"scope-{h}",
                route_configuration_name=f"rc-{h}",
                key=scoped_v3.ScopedRouteConfiguration.Key(
                    fragments=[scoped_v3.ScopedRouteConfiguration.Key.Fragment(string_key=host(h))]
                ),
            )
            for h in range(self.hosts)
        }
        return ROUTE

    def connection_manager(self) -> dict[str, Any]:
        ads = {"ads": {}, "resource_api_version": "V3"}
        manager: dict[str, Any] = {
            "@type": HCM,
            "stat_prefix": "bench",
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }
            ],
        }
        if self.mode == "srds":
            extractor = {"name": ":authority", "element_separator": ":", "index": 0}
            manager["scoped_routes"] = {
                "name": "scopes",
                "scope_key_builder": {"fragments": [{"header_value_extractor": extractor}]},
                "rds_config_source": ads,
                "scoped_rds": {"scoped_rds_config_source": ads},
            }
        else:
            manager["rds"] = {"route_config_name": "rc", "config_source": ads}
        return manager


def _named(vhost: rc_v3.VirtualHost, name: str) -> rc_v3.VirtualHost:
    copy = rc_v3.VirtualHost()
    copy.CopyFrom(vhost)
    copy.name = name
    return copy


# -- a minimal delta ADS server --------------------------------------------------------------------------------


@dataclass
class Sent:
    at: float
    nonce: str
    type_url: str


class DeltaServer:
    """Serves `layout.resources` over delta ADS to one Envoy; `push(type_url, names)` re-sends those resources."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.subscribed: dict[str, set[str]] = {}
        self.outbox: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
        self.sent: dict[str, Sent] = {}
        self.acks: dict[str, float] = {}  # nonce -> when its ACK arrived
        self.nacks: list[str] = []
        self._nonces = itertools.count(1)
        self.versions: dict[tuple[str, str], int] = {}

    def matching(self, type_url: str, names: set[str]) -> list[str]:
        held = self.layout.resources.get(type_url, {})
        if not names or "*" in names:
            return sorted(held)
        # VHDS subscribes to a namespace: the resources named <namespace>/<name>.
        return sorted(n for n in held if n in names or n.rpartition("/")[0] in names)

    def response(self, type_url: str, names: list[str]) -> bytes:
        nonce = str(next(self._nonces))
        resources = []
        for name in names:
            message = self.layout.resources[type_url][name]
            version = self.versions.setdefault((type_url, name), 0)
            packed = any_pb2.Any()
            packed.Pack(message)
            resources.append(discovery_v3.Resource(name=name, version=str(version), resource=packed))
        data = discovery_v3.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce, resources=resources)
        self.sent[nonce] = Sent(time.monotonic(), nonce, type_url)
        return bytes(data.SerializeToString())

    async def stream(
        self, requests: AsyncIterator[discovery_v3.DeltaDiscoveryRequest], context: Any
    ) -> AsyncIterator[bytes]:
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                type_url, names = await self.outbox.get()
                if names:
                    yield self.response(type_url, names)
        finally:
            reader.cancel()

    async def _read(self, requests: AsyncIterator[discovery_v3.DeltaDiscoveryRequest]) -> None:
        async for request in requests:
            if request.response_nonce:
                if request.HasField("error_detail"):
                    self.nacks.append(request.error_detail.message)
                self.acks.setdefault(request.response_nonce, time.monotonic())
            new = set(request.resource_names_subscribe)
            known = self.subscribed.setdefault(request.type_url, set())
            known |= new
            if new or not request.response_nonce:
                self.outbox.put_nowait((request.type_url, self.matching(request.type_url, new)))

    def push(self, type_url: str, names: list[str]) -> None:
        for name in names:
            self.versions[(type_url, name)] = self.versions.get((type_url, name), 0) + 1
        self.outbox.put_nowait((type_url, names))


async def serve(server: DeltaServer) -> tuple[grpc.aio.Server, int]:
    grpc_server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        server.stream,
        request_deserializer=discovery_v3.DeltaDiscoveryRequest.FromString,
        response_serializer=lambda data: data,
    )
    grpc_server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(ADS_SERVICE, {"DeltaAggregatedResources": handler}),)
    )
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    return grpc_server, port


def bootstrap(xds_port: int, listener_port: int, layout: Layout) -> dict[str, Any]:
    xds = {
        "name": "xds",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "xds",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(xds_port)}}]}],
        },
    }
    manager = {"name": "envoy.filters.network.http_connection_manager", "typed_config": layout.connection_manager()}
    listener = {"name": "bench", "address": _address(listener_port), "filter_chains": [{"filters": [manager]}]}
    return {
        "node": {"id": f"split-{layout.mode}", "cluster": "bench"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            }
        },
        "static_resources": {"clusters": [xds], "listeners": [listener]},
        "admin": {"address": _address(0)},
    }


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


class Poller:
    """Polls /probe with Host host-0 in a thread of its own until the wanted body answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def wait(self, body: bytes, deadline: float) -> float | None:
        while time.monotonic() < deadline:
            try:
                self.connection.request("GET", "/probe", headers={"Host": host(0)})
                response = self.connection.getresponse()
                got = response.read()
            except (OSError, http.client.HTTPException):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                time.sleep(0.01)
                continue
            if got == body:
                return time.monotonic()
            time.sleep(0.001)
        return None


@dataclass
class Result:
    mode: str
    bytes_per_change: int = 0
    ack_ms: list[float] = field(default_factory=list)
    serve_ms: list[float] = field(default_factory=list)
    nacks: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "bytes_per_change": self.bytes_per_change,
            "ack_p50_ms": statistics.median(self.ack_ms) if self.ack_ms else None,
            "serve_p50_ms": statistics.median(self.serve_ms) if self.serve_ms else None,
            "ack_p99_ms": percentile(self.ack_ms, 99) if self.ack_ms else None,
            "serve_p99_ms": percentile(self.serve_ms, 99) if self.serve_ms else None,
            "ack_ms": [round(v, 2) for v in self.ack_ms],
            "nacks": self.nacks,
        }


async def run_mode(mode: str, args: argparse.Namespace, work: Path) -> Result:
    layout = Layout(mode, args.routes, args.hosts)
    changed_type = layout.build(0)
    server = DeltaServer(layout)
    grpc_server, xds_port = await serve(server)
    listener_port = free_port()
    log = (work / f"envoy-{mode}.log").open("wb")
    envoy = EnvoyProcess(bootstrap(xds_port, listener_port, layout), work / mode, concurrency=1, output=log)
    result = Result(mode)
    try:
        await envoy.start()
        await envoy.wait_ready(120)
        poller = Poller(listener_port)
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, poller.wait, b"gen-0", time.monotonic() + 60) is None:
            raise RuntimeError(f"{mode}: Envoy did not serve the initial routes")
        names = {"one": ["rc"], "hosts": ["rc"], "vhds": ["rc/host-0"], "srds": ["rc-0"]}[mode]
        for generation in range(1, args.changes + 1):
            layout.build(generation)
            before = set(server.sent)
            server.push(changed_type, names)
            body = f"gen-{generation}".encode()
            served = await loop.run_in_executor(None, poller.wait, body, time.monotonic() + 30)
            new = [n for n in server.sent if n not in before]
            nonce = new[0] if new else ""
            deadline = time.monotonic() + 30
            while nonce not in server.acks and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            sent = server.sent.get(nonce)
            if sent is not None and nonce in server.acks and served is not None:
                result.ack_ms.append((server.acks[nonce] - sent.at) * 1000)
                result.serve_ms.append((served - sent.at) * 1000)
            result.bytes_per_change = sum(len(layout.resources[changed_type][n].SerializeToString()) for n in names)
            await asyncio.sleep(0.05)
        result.nacks = len(server.nacks)
    finally:
        await envoy.stop()
        await grpc_server.stop(None)
        log.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=100, help="virtual hosts (and scopes) the routes are spread over")
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--stall-seconds", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    return asyncio.run(run(args))


async def run(args: argparse.Namespace) -> int:
    stalls = _stalls.measure(args.stall_seconds) if args.stall_seconds else []
    results = []
    with tempfile.TemporaryDirectory(prefix="xgate-split-") as tmp:
        for mode in args.modes.split(","):
            results.append(await run_mode(mode, args, Path(tmp)))
    summaries = [result.summary() for result in results]
    if args.json:
        print(json.dumps({"results": summaries, "stalls": [s.summary() for s in stalls]}))
        return 0
    print(f"{args.routes} routes ({args.hosts} hosts or scopes where split), {args.changes} one-route changes each")
    print(f"{'mode':6} {'bytes/change':>13} {'ACK p50/p99':>16} {'served p50/p99':>16}")
    for s in summaries:
        ack = f"{s['ack_p50_ms']:.1f}/{s['ack_p99_ms']:.1f}ms" if s["ack_ms"] else "none"
        served = f"{s['serve_p50_ms']:.1f}/{s['serve_p99_ms']:.1f}ms" if s["serve_p50_ms"] is not None else "none"
        print(f"{s['mode']:6} {s['bytes_per_change']:13,} {ack:>16} {served:>16}  nacks {s['nacks']}")
    if stalls:
        print(f"machine: {_stalls.line(stalls)}")
        print(f"  floor (job CPU ms -> p50/p99 wall ms): {_stalls.jobs_line(stalls)}")
    return 1 if any(result.nacks for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
