"""Ports for tests on loopback that are free now and stay out of the kernel's way.

Binding port 0 gets a port from the ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 here), the
range the kernel also draws every outgoing connection's local port from. A port picked that way and handed to
Envoy or etcd a moment later can meanwhile become the local port of some client connection, and the bind
fails ("Address already in use": seen in CI as a listener NACK). So the ports come from below that range,
where only explicit binds go, each one checked free and never handed out twice by this process.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

LOWEST = 20000  # above the fixed ports xgate's commands use by default (9901, 10000, 18000-18085)
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def _highest() -> int:
    """The port just below the ephemeral range (32767 on Linux's default)."""
    try:
        low = int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return low - 1


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1, free a moment ago, outside the ephemeral range when there is
    room below it (else from it, as binding port 0 gives). All stay bound until every one is picked."""
    highest = _highest()
    if highest - LOWEST < 1000:
        return _ephemeral(count)
    if len(_handed_out) > (highest - LOWEST) // 2:
        _handed_out.clear()
    ports: list[int] = []
    with contextlib.ExitStack() as stack:
        while len(ports) < count:
            port = random.randint(LOWEST, highest)
            if port in _handed_out or port in ports:
                continue
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
    _handed_out.update(ports)
    return ports


def _ephemeral(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports
