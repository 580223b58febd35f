"""Test ports come from below the ephemeral range, so a client connection cannot take one before it is bound."""

from __future__ import annotations

import random
import socket

import pytest

from xgate.testing import ports


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    picked = ports.free_ports(50) + ports.free_ports(50)
    assert len(set(picked)) == 100  # never handed out twice
    assert all(ports.LOWEST <= port <= ports._highest() for port in picked)
    for port in picked[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # still free


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", ports.free_ports(1)[0]))
        busy = taken.getsockname()[1]
        ports._handed_out.discard(busy)
        other = ports.free_ports(1)[0]
        ports._handed_out.discard(other)
        choices = iter([busy, other])
        monkeypatch.setattr(random, "randint", lambda low, high: next(choices))
        assert ports.free_ports(1) == [other]
