"""DeferredFreeze: one collection per burst of loads, then what is left is frozen; garbage frozen by an earlier
load is freed by the next whole-heap pass, at most `full_every` apart."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from xgate.heap import DeferredFreeze


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # leave the test process's collector as it was


async def test_loads_in_a_burst_collect_once_and_then_freeze(unfrozen: None) -> None:
    freeze = DeferredFreeze(0.02)
    with mock.patch("gc.collect", wraps=gc.collect) as collect:
        for _ in range(5):
            freeze.soon()
        assert collect.call_count == 0  # deferred
        await asyncio.sleep(0.1)
        assert collect.call_count == 1
    assert gc.get_freeze_count() > 0


async def test_garbage_frozen_by_an_earlier_load_is_freed(unfrozen: None) -> None:
    node = Node()
    ref = weakref.ref(node)
    gc.freeze()  # an earlier load froze it while it was alive
    del node
    gc.collect()
    assert ref() is not None  # frozen objects are out of the collector's reach
    DeferredFreeze(0.01).now()
    assert ref() is None


def test_a_burst_of_loads_walks_the_frozen_heap_once_per_full_every(unfrozen: None) -> None:
    """Loads closer together than `full_every` collect only what came since the last freeze; the first, and
    the first after `full_every`, the whole heap."""
    now = [0.0]
    freeze = DeferredFreeze(0.01, full_every=60, clock=lambda: now[0])
    with mock.patch("gc.unfreeze", wraps=gc.unfreeze) as unfreeze:
        freeze.now()
        node = Node()
        ref = weakref.ref(node)
        gc.freeze()
        del node
        now[0] = 59.0
        freeze.now()  # within a minute: the frozen cycle stays
        assert unfreeze.call_count == 1 and ref() is not None
        young = Node()
        young_ref = weakref.ref(young)
        del young
        freeze.now()
        assert young_ref() is None  # what came since the last freeze is still collected
        now[0] = 60.0
        freeze.now()
        assert unfreeze.call_count == 2 and ref() is None


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_memory_a_load_dropped_goes_back_to_the_system(unfrozen: None) -> None:
    """Freed blocks between ones still alive stay in the process (glibc keeps them) until the freeze's trim."""
    loaded = [b"x" * 5000 + bytes([n % 256]) for n in range(40_000)]  # ~200 MB, as a big parse's leftovers
    kept = loaded[::50]  # what outlives the load, spread over the heap
    del loaded
    before = resident_mb()
    DeferredFreeze().now()
    assert before - resident_mb() > 100, "the freed 200 MB stayed in the process"
    assert len(kept) == 800
