"""Probe: what Envoy does with each way `route_tables: per_host` could deliver scopes (why translate.perhost is so).

Run from the repository, with the test lock held: `flock -o /tmp/xgate-test.lock .venv/bin/python
bench/scoped_routes_probe.py`. Prints, for a real Envoy:
1. scopes listed in the listener (static) that name their table over RDS: Envoy's refusal (`--mode validate`);
2. scopes over SRDS on two listeners that both serve host a.com: the NACK;
3. the same with a.com on listener A and b.com on listener B only: what each listener answers for each host.
It uses bench/route_split.py's small delta ADS server.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.config.route.v3 import scoped_route_pb2 as scoped_v3

import route_split as rs
from xgate.proxy.bootstrap import find_envoy
from xgate.proxy.process import EnvoyProcess
from xgate.testing.gateway import free_port

ADS = {"ads": {}, "resource_api_version": "V3"}
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
KEY = {"fragments": [{"header_value_extractor": {"name": ":authority", "element_separator": ":", "index": 0}}]}
Key = scoped_v3.ScopedRouteConfiguration.Key


def scope(name: str, host: str) -> scoped_v3.ScopedRouteConfiguration:
    return scoped_v3.ScopedRouteConfiguration(
        name=name, route_configuration_name=name, key=Key(fragments=[Key.Fragment(string_key=host)])
    )


def manager(prefix: str, scoped: dict[str, Any]) -> dict[str, Any]:
    routes = {"name": prefix, "scope_key_builder": KEY, "rds_config_source": ADS, **scoped}
    config = {"@type": rs.HCM, "stat_prefix": prefix, "http_filters": [ROUTER], "scoped_routes": routes}
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def listener(name: str, port: int, scoped: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "address": rs._address(port), "filter_chains": [{"filters": [manager(name, scoped)]}]}


def static_scopes_naming_rds() -> str:
    key = {"fragments": [{"string_key": "a.com"}]}
    scopes = {"scoped_route_configurations": [{"name": "a", "route_configuration_name": "t", "key": key}]}
    bootstrap = {
        "static_resources": {"listeners": [listener("A", 10000, {"scoped_route_configurations_list": scopes})]}
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(bootstrap, file)
        file.flush()
        result = subprocess.run([find_envoy(), "--mode", "validate", "-c", file.name], capture_output=True, text=True)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "scoped" in line or "RDS" in line]
    return f"exit {result.returncode}: " + (lines[-1] if lines else "(no message)")


def get(port: int, host: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/", headers={"Host": host})
    response = connection.getresponse()
    return response.status, response.read()


async def two_listeners(case: str, scopes: list[scoped_v3.ScopedRouteConfiguration], work: Path) -> None:
    layout = rs.Layout("srds", 1, 1)
    tables = {s.name: route_v3.RouteConfiguration(name=s.name) for s in scopes}
    for s in scopes:
        tables[s.name].virtual_hosts.add(name="v", domains=["*"]).routes.append(rs._route("/", s.name))
    layout.resources = {rs.SCOPE: {s.name: s for s in scopes}, rs.ROUTE: tables}
    server = rs.DeltaServer(layout)
    grpc_server, xds_port = await rs.serve(server)
    ports = {"A": free_port(), "B": free_port()}
    bootstrap = rs.bootstrap(xds_port, ports["A"], layout)
    srds = {"scoped_rds": {"scoped_rds_config_source": ADS}}
    bootstrap["static_resources"]["listeners"] = [listener(name, port, srds) for name, port in ports.items()]
    envoy = EnvoyProcess(bootstrap, work / case, concurrency=1, output=(work / f"{case}.log").open("wb"))
    try:
        await envoy.start()
        await envoy.wait_ready(60)
        for _ in range(300):  # until every table arrived or Envoy refused the scopes (bounded: 3 s)
            _, body = await envoy.admin_get("/stats?filter=\\.rds\\..*\\.update_success$")
            if server.nacks or body.count(": 1") >= 2 * len(scopes):  # each table on each listener
                break
            await asyncio.sleep(0.01)
        print(f"{case}: NACKs {server.nacks}")
        for host in ("a.com", "b.com"):
            print(f"  Host {host}: listener A -> {get(ports['A'], host)}, listener B -> {get(ports['B'], host)}")
    finally:
        await envoy.stop()
        await grpc_server.stop(None)


async def main() -> None:
    print("static scopes naming their table over RDS:", static_scopes_naming_rds())
    with tempfile.TemporaryDirectory() as name:
        work = Path(name)
        await two_listeners("SRDS, a.com on A and on B", [scope("A/a.com", "a.com"), scope("B/a.com", "a.com")], work)
        await two_listeners(
            "SRDS, a.com on A, b.com on B", [scope("A/a.com", "a.com"), scope("B/b.com", "b.com")], work
        )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
