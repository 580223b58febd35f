"""A listener's RouteConfiguration kept as serialized pieces: changing one route serializes one route.

The bytes it assembles equal `translate_routes(listener).SerializeToString(deterministic=True)` (a test
holds it to that; with `route_tables: per_host`, each host's table equals translate.perhost's): deterministic
serialization writes fields in number order, and a repeated message field is its elements' bytes one after
another, each behind a tag and a length (see xgate.protowire).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3

from xgate.ir.build import precedence
from xgate.ir.model import RouteIR
from xgate.protowire import field_head, length_delimited
from xgate.sortedblocks import Block, SortedBlocks
from xgate.translate import names
from xgate.translate.retries import virtual_host_retry_policy
from xgate.translate.route import translate_route

_VIRTUAL_HOSTS = 2  # RouteConfiguration.virtual_hosts
_ROUTES = 3  # VirtualHost.routes


@dataclass(frozen=True)
class _Entry:
    key: tuple[object, ...]
    hosts: tuple[str, ...]
    wire: bytes  # the route's Envoy routes as elements of VirtualHost.routes
    ir: RouteIR


# A RouteConfiguration's fields after its virtual hosts (a route's host is matched without the request's port).
_TAIL: bytes = route_v3.RouteConfiguration(ignore_port_in_host_matching=True).SerializeToString(deterministic=True)

Position = tuple[tuple[object, ...], str]  # (precedence key, route name): a route's place in the table


class RouteTable:
    """The routes of one listener, in precedence order (ties broken by name, as etcd lists keys)."""

    def __init__(self, listener: str, filters: tuple[str, ...], *, per_host: bool = False) -> None:
        self.listener = listener
        self.filters = filters
        self.per_host = per_host
        # per_host: each host's routes in the same order, and the hosts whose table changed since `take_touched`.
        self._by_host: dict[str, SortedBlocks[Position, bytes]] = {}
        self._touched: set[str] = set()
        self._entries: dict[str, _Entry] = {}
        # Each block's cache: its routes' bytes joined, so a change rejoins one block of at most 128 routes.
        self._blocks: SortedBlocks[Position, bytes] = SortedBlocks()
        self._wire_size = 0  # the routes' bytes in all
        self._hosts: Counter[str] = Counter()  # host name -> routes naming it
        self._hosted = 0  # routes that name a host
        self._heads: dict[tuple[str, ...], bytes] = {}  # a virtual host's fields before its routes, by hosts
        self._tail: bytes | None = None

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
        self._blocks.set((key, ir.name), wire)
        self._wire_size += len(wire)
        self._count_hosts(entry.hosts, 1)
        if self.per_host:
            for host in dict.fromkeys(entry.hosts):
                self._by_host.setdefault(host, SortedBlocks()).set((key, ir.name), wire)
                self._touched.add(host)

    def remove(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._blocks.delete((entry.key, name))
            self._wire_size -= len(entry.wire)
            self._count_hosts(entry.hosts, -1)
            if self.per_host:
                for host in dict.fromkeys(entry.hosts):
                    if (blocks := self._by_host.get(host)) is not None:
                        blocks.delete((entry.key, name))
                        if not blocks.blocks:
                            del self._by_host[host]
                    self._touched.add(host)

    def _count_hosts(self, hosts: tuple[str, ...], step: int) -> None:
        specific = [host for host in hosts if host != "*"]
        if specific:
            self._hosted += step
            self._hosts.update({host: step for host in specific})
            for host in specific:
                if self._hosts[host] <= 0:
                    del self._hosts[host]
                    self._heads.pop((host,), None)

    def get(self, name: str) -> RouteIR | None:
        entry = self._entries.get(name)
        return entry.ir if entry is not None else None

    def _ordered(self) -> list[_Entry]:
        return [self._entries[name] for _, name in self._blocks]

    def routes(self) -> list[RouteIR]:
        return [entry.ir for entry in self._ordered()]

    def hosts(self) -> frozenset[str]:
        """The host names routes name (for per_host: the hosts that have a table)."""
        return frozenset(self._hosts)

    def take_touched(self) -> set[str]:
        """per_host: the hosts whose table changed since the last call (gone ones included)."""
        touched, self._touched = self._touched, set()
        return touched

    def configs(self) -> dict[str, bytes]:
        """Every RouteConfiguration of the listener, serialized, by name: its one table, or one per host when
        per_host and some route names a host (translate.perhost.translate_route_configs' layout)."""
        if not (self.per_host and self._by_host):
            return {names.route_config(self.listener): self.assemble()}
        return {names.host_route_config(self.listener, host): self.assemble_host(host) for host in self._by_host}

    def assemble_host(self, host: str) -> bytes:
        """per_host: the serialized RouteConfiguration of one host, its routes in one virtual host."""
        blocks = [_joined(block) for block in self._by_host[host].blocks]
        name = names.host_route_config(self.listener, host)
        head: bytes = route_v3.RouteConfiguration(name=name).SerializeToString(deterministic=True)
        after = self._virtual_host_tail()
        return b"".join([head, *self._virtual_host_head((host,), sum(map(len, blocks))), *blocks, after, _TAIL])

    def assemble(self) -> bytes:
        """The serialized RouteConfiguration (see translate_routes for the virtual host layout), joined from
        its parts in one copy: the routes' bytes are copied once, not once per enclosing message."""
        head: bytes = route_v3.RouteConfiguration(name=names.route_config(self.listener)).SerializeToString(
            deterministic=True
        )
        tail = _TAIL
        if not self._hosted:
            blocks = [_joined(block) for block in self._blocks.blocks]
            after = self._virtual_host_tail()
            return b"".join([head, *self._virtual_host_head(("*",), self._wire_size), *blocks, after, tail])
        # One pass over the routes, each added to the hosts it names (a "*" route to all): linear in the output.
        by_host: dict[str, list[bytes]] = {host: [] for host in sorted(self._hosts)}
        anywhere: list[bytes] = []
        for entry in self._ordered():
            if "*" in entry.hosts:
                for wires in by_host.values():
                    wires.append(entry.wire)
                anywhere.append(entry.wire)
            else:
                for host in dict.fromkeys(entry.hosts):
                    by_host[host].append(entry.wire)
        parts = [head]
        for hosts, wires in [*(((host,), wires) for host, wires in by_host.items()), (("*",), anywhere)]:
            parts += self._virtual_host_head(hosts, sum(map(len, wires)))
            parts += wires
            parts.append(self._virtual_host_tail())
        parts.append(tail)
        return b"".join(parts)

    def _virtual_host_head(self, hosts: tuple[str, ...], routes_size: int) -> tuple[bytes, bytes]:
        """RouteConfiguration.virtual_hosts' tag and length, and the VirtualHost's fields before its routes."""
        encoded = self._heads.get(hosts)
        if encoded is None:  # (kept while the host has routes: 5,000 hosts cost 20 ms a change to encode)
            head = route_components_v3.VirtualHost(name=names.virtual_host(self.listener, hosts), domains=list(hosts))
            encoded = self._heads[hosts] = head.SerializeToString(deterministic=True)
        return field_head(_VIRTUAL_HOSTS, len(encoded) + routes_size + len(self._virtual_host_tail())), encoded

    def _virtual_host_tail(self) -> bytes:
        """The VirtualHost's fields after its routes: the default retry policy (see translate.retries)."""
        if self._tail is None:
            tail = route_components_v3.VirtualHost(retry_policy=virtual_host_retry_policy())
            self._tail = tail.SerializeToString(deterministic=True)
        return self._tail


def _joined(block: Block[Position, bytes]) -> bytes:
    if block.cache is None:
        block.cache = b"".join(block.values)
    joined: bytes = block.cache
    return joined
