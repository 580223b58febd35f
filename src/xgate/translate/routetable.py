"""A listener's RouteConfiguration kept as serialized pieces: changing one route serializes one route.

The bytes it assembles equal `translate_routes(listener).SerializeToString(deterministic=True)` (a test
holds it to that): deterministic serialization writes fields in number order, and a repeated message field
is its elements' bytes one after another, each behind a tag and a length (see xgate.protowire).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3

from xgate.ir.build import precedence
from xgate.ir.model import RouteIR
from xgate.protowire import length_delimited
from xgate.translate import names
from xgate.translate.route import translate_route

_VIRTUAL_HOSTS = 2  # RouteConfiguration.virtual_hosts
_ROUTES = 3  # VirtualHost.routes


@dataclass(frozen=True)
class _Entry:
    key: tuple[object, ...]
    hosts: tuple[str, ...]
    wire: bytes  # the route's Envoy routes as elements of VirtualHost.routes
    ir: RouteIR


class RouteTable:
    """The routes of one listener, in precedence order (ties broken by name, as etcd lists keys)."""

    def __init__(self, listener: str, filters: tuple[str, ...]) -> None:
        self.listener = listener
        self.filters = filters
        self._entries: dict[str, _Entry] = {}
        self._order: list[tuple[tuple[object, ...], str]] = []
        # Kept in step with _order so the common case (no route names a host) is one bytes join.
        self._wires: list[bytes] = []
        self._hosts: Counter[str] = Counter()  # host name -> routes naming it
        self._hosted = 0  # routes that name a host

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def put(self, ir: RouteIR, protos: list[route_components_v3.Route] | None = None) -> None:
        """Add or replace a route; `protos` is its translation when already at hand."""
        self.remove(ir.name)
        protos = protos if protos else translate_route(ir, self.filters)
        key = (*precedence(ir.route), ir.name)
        wire = b"".join(length_delimited(_ROUTES, proto.SerializeToString(deterministic=True)) for proto in protos)
        entry = _Entry(key, ir.route.match.hosts, wire, ir)
        self._entries[ir.name] = entry
        index = bisect.bisect_left(self._order, (key, ir.name))
        self._order.insert(index, (key, ir.name))
        self._wires.insert(index, entry.wire)
        self._count_hosts(entry.hosts, 1)

    def remove(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            index = bisect.bisect_left(self._order, (entry.key, name))
            del self._order[index]
            del self._wires[index]
            self._count_hosts(entry.hosts, -1)

    def _count_hosts(self, hosts: tuple[str, ...], step: int) -> None:
        specific = [host for host in hosts if host != "*"]
        if specific:
            self._hosted += step
            self._hosts.update({host: step for host in specific})
            for host in specific:
                if self._hosts[host] <= 0:
                    del self._hosts[host]

    def get(self, name: str) -> RouteIR | None:
        entry = self._entries.get(name)
        return entry.ir if entry is not None else None

    def routes(self) -> list[RouteIR]:
        return [self._entries[name].ir for _, name in self._order]

    def assemble(self) -> bytes:
        """The serialized RouteConfiguration (see translate_routes for the virtual host layout)."""
        if self._hosted:
            ordered = [self._entries[name] for _, name in self._order]
            virtual_hosts = [
                self._virtual_host((host,), [e.wire for e in ordered if host in e.hosts or "*" in e.hosts])
                for host in sorted(self._hosts)
            ]
            virtual_hosts.append(self._virtual_host(("*",), [e.wire for e in ordered if "*" in e.hosts]))
        else:
            virtual_hosts = [self._virtual_host(("*",), self._wires)]
        head: bytes = route_v3.RouteConfiguration(name=names.route_config(self.listener)).SerializeToString(
            deterministic=True
        )
        tail: bytes = route_v3.RouteConfiguration(ignore_port_in_host_matching=True).SerializeToString(
            deterministic=True
        )
        return head + b"".join(length_delimited(_VIRTUAL_HOSTS, vh) for vh in virtual_hosts) + tail

    def _virtual_host(self, hosts: tuple[str, ...], routes: list[bytes]) -> bytes:
        head = route_components_v3.VirtualHost(name=names.virtual_host(self.listener, hosts), domains=list(hosts))
        encoded: bytes = head.SerializeToString(deterministic=True)
        return encoded + b"".join(routes)
