"""DeferredFreeze: one collection per burst of loads, then what is left is frozen, and garbage frozen by an
earlier load is freed by the next one."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
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
