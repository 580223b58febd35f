"""Keeping Python's cyclic garbage collector out of the way of big loads, and handing back what they leave behind."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import time
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Run a parse or compile without the cyclic GC: with a 10,000-route config alive, its collections
    cost more than the work itself (measured 150-300 ms of 400). What these stages build is acyclic, and
    the collector runs again right after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class DeferredFreeze:
    """Collect, then move what is left (modules, the loaded config: in a service that is most of the heap) out
    of the cyclic collector's reach with gc.freeze, `delay` seconds after a (re)load.

    Without it the collector's full passes walk that heap again and again: 30-45 ms pauses seen in
    `xgate authz` under load, a stall for every request in flight, and 150 ms at 10,000 routes in the control
    plane. Later collections walk only newer objects. Deferred, so the collection itself does not stand
    between a new config and its first use. At most every `full_every` seconds it unfreezes first, so the
    collection walks the whole heap and frees the cycles earlier loads froze; between those, it walks only
    what came since the last freeze (a one-route control plane's key rotation: 32 ms of CPU, most of a change's,
    went on walking the frozen modules again each time). Cycles a load freezes wait for the next whole pass;
    what is not in a cycle is freed by its reference count anyway. `clock` tells the time (a test's own).
    """

    def __init__(
        self, delay: float = 0.5, full_every: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.delay = delay
        self.full_every = full_every
        self._clock = clock
        self._pending: asyncio.TimerHandle | None = None
        self._full_at: float | None = None  # clock() at the last whole-heap pass

    def soon(self) -> None:
        """Schedule the freeze on the running loop (once, however many loads come before it runs)."""
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self.delay, self.now)

    def now(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        now = self._clock()
        if self._full_at is None or now - self._full_at >= self.full_every:
            gc.unfreeze()
            self._full_at = now
        gc.collect()
        gc.freeze()
        release_freed_memory()


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim): what a big load parsed and dropped
    otherwise stays in the process's RSS (14 MB at 10,000 routes). Nothing happens with other C libraries."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None
    return trim
