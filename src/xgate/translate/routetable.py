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
from xgate.protowire import field_head, length_delimited
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


Position = tuple[tuple[object, ...], str]  # (precedence key, route name): a route's place in the table

# Routes per block, up to twice that before a block splits. A change rejoins one block, and assembling joins
# about n/64 blocks: a join that touched each of 10,000 route pieces cost 0.4 ms per change in a running
# control plane (their cache lines are cold by then), though 0.15 ms in a loop.
_BLOCK = 64


@dataclass
class _Block:
    """Consecutive routes of the table, in order, and their bytes joined (once, until the block changes)."""

    positions: list[Position]
    wires: list[bytes]
    joined: bytes | None = None

    def bytes(self) -> bytes:
        if self.joined is None:
            self.joined = b"".join(self.wires)
        return self.joined


class RouteTable:
    """The routes of one listener, in precedence order (ties broken by name, as etcd lists keys)."""

    def __init__(self, listener: str, filters: tuple[str, ...]) -> None:
        self.listener = listener
        self.filters = filters
        self._entries: dict[str, _Entry] = {}
        self._blocks: list[_Block] = []
        self._wire_size = 0  # the routes' bytes in all
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
        self._insert((key, ir.name), wire)
        self._wire_size += len(wire)
        self._count_hosts(entry.hosts, 1)

    def remove(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._delete((entry.key, name))
            self._wire_size -= len(entry.wire)
            self._count_hosts(entry.hosts, -1)

    def _insert(self, position: Position, wire: bytes) -> None:
        if not self._blocks:
            self._blocks.append(_Block([position], [wire]))
            return
        index = max(0, self._block_of(position))
        block = self._blocks[index]
        at = bisect.bisect_left(block.positions, position)
        block.positions.insert(at, position)
        block.wires.insert(at, wire)
        block.joined = None
        if len(block.positions) > 2 * _BLOCK:
            tail = _Block(block.positions[_BLOCK:], block.wires[_BLOCK:])
            del block.positions[_BLOCK:], block.wires[_BLOCK:]
            self._blocks.insert(index + 1, tail)

    def _delete(self, position: Position) -> None:
        index = self._block_of(position)
        block = self._blocks[index]
        at = bisect.bisect_left(block.positions, position)
        del block.positions[at], block.wires[at]
        block.joined = None
        if not block.positions:
            del self._blocks[index]

    def _block_of(self, position: Position) -> int:
        """The last block starting at or before `position` (-1: before the first block)."""
        return bisect.bisect_right(self._blocks, position, key=lambda block: block.positions[0]) - 1

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

    def _ordered(self) -> list[_Entry]:
        return [self._entries[name] for block in self._blocks for _, name in block.positions]

    def routes(self) -> list[RouteIR]:
        return [entry.ir for entry in self._ordered()]

    def assemble(self) -> bytes:
        """The serialized RouteConfiguration (see translate_routes for the virtual host layout), joined from
        its parts in one copy: the routes' bytes are copied once, not once per enclosing message."""
        head: bytes = route_v3.RouteConfiguration(name=names.route_config(self.listener)).SerializeToString(
            deterministic=True
        )
        tail: bytes = route_v3.RouteConfiguration(ignore_port_in_host_matching=True).SerializeToString(
            deterministic=True
        )
        if not self._hosted:
            blocks = [block.bytes() for block in self._blocks]
            return b"".join([head, *self._virtual_host_head(("*",), self._wire_size), *blocks, tail])
        ordered = self._ordered()
        parts = [head]
        for hosts in [*((host,) for host in sorted(self._hosts)), ("*",)]:
            wires = [e.wire for e in ordered if "*" in e.hosts or hosts[0] in e.hosts]
            parts += self._virtual_host_head(hosts, sum(map(len, wires)))
            parts += wires
        parts.append(tail)
        return b"".join(parts)

    def _virtual_host_head(self, hosts: tuple[str, ...], routes_size: int) -> tuple[bytes, bytes]:
        """RouteConfiguration.virtual_hosts' tag and length, and the VirtualHost's fields before its routes."""
        head = route_components_v3.VirtualHost(name=names.virtual_host(self.listener, hosts), domains=list(hosts))
        encoded: bytes = head.SerializeToString(deterministic=True)
        return field_head(_VIRTUAL_HOSTS, len(encoded) + routes_size), encoded
