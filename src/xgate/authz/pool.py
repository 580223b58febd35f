"""The policy pool: threads running plain policies, whose answers go back to the event loop a batch at a time.

Why not concurrent.futures' ThreadPoolExecutor with asyncio.wrap_future (what runner.py used): per check that
made a Future, an asyncio Future chained to it, a task and a timeout context on the loop, and one wake-up of the
loop (a write to its self-pipe) per answer; an uncached plain policy over the HTTP transport cost ~75 µs of xgate
authz CPU per check, ~47 µs more than the same call inline. Here a check is one tuple in a SimpleQueue; a worker
appends its answer to a list and wakes the loop only if the loop has not been woken for an earlier answer it has
yet to take: under load, one wake-up hands back every answer finished meanwhile.

Semantics kept from the executor: at most `threads` policies run at once; a call that hangs keeps its thread
(Python cannot stop one) and the check is answered at its deadline by the caller; a call still queued when its
deadline has passed is dropped, not run (its check has been answered). The threads are daemons: a policy that
hangs for good does not keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeAlias

# What a call gave: (result, None), or (None, what it raised); LATE when dropped past its deadline.
Returned: TypeAlias = tuple[Any, BaseException | None]
Done: TypeAlias = Callable[[Returned], None]
LATE: Returned = (None, TimeoutError("dropped from the policy pool's queue past its deadline"))
_Job: TypeAlias = tuple[float, Callable[..., Any], tuple[Any, ...], Done]


class PolicyPool:
    """`threads` workers, started on first use. `submit` from any thread; `on_loop` makes a `done` that runs on
    the loop, batched. `close()` stops the idle workers; a hung one ends with the process."""

    def __init__(self, threads: int, name: str = "xgate-policy") -> None:
        self._size, self._name = threads, name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        # Answers for each loop, waiting for it to take them; whether that loop was woken for them already.
        self._lock = threading.Lock()
        self._answers: dict[asyncio.AbstractEventLoop, list[tuple[Done, Returned]]] = {}
        self._closed = False

    @property
    def started(self) -> bool:
        return bool(self._workers)

    def submit(self, deadline: float, call: Callable[..., Any], arguments: tuple[Any, ...], done: Done) -> None:
        """Run `call(*arguments)` in a worker and pass what it gave to `done` there (LATE if it was still queued
        at `deadline`, time.monotonic()). `done` must not block."""
        if not self._workers:
            self._start()
        self._jobs.put((deadline, call, arguments, done))

    def on_loop(self, loop: asyncio.AbstractEventLoop, done: Done) -> Done:
        """A `done` for `submit` that calls `done` on `loop` instead, batched with the other answers for it."""

        def hand_back(returned: Returned) -> None:
            with self._lock:
                waiting = self._answers.get(loop)
                if waiting is not None:  # the loop is woken already and will take this one too
                    waiting.append((done, returned))
                    return
                self._answers[loop] = [(done, returned)]
            try:
                loop.call_soon_threadsafe(self._take, loop)
            except RuntimeError:  # the loop is closed: nobody waits for its answers
                with self._lock:
                    self._answers.pop(loop, None)

        return hand_back

    def _take(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            answers = self._answers.pop(loop, [])
        for done, returned in answers:
            done(returned)

    def close(self) -> None:
        with self._start_lock:
            self._closed = True
            for _ in self._workers:
                self._jobs.put(None)
            self._workers = []

    def _start(self) -> None:
        with self._start_lock:  # the gRPC server's threads may all come at once
            if self._workers or self._closed:
                return
            for index in range(self._size):
                worker = threading.Thread(target=self._work, name=f"{self._name}_{index}", daemon=True)
                worker.start()
                self._workers.append(worker)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            deadline, call, arguments, done = job
            if time.monotonic() >= deadline:
                returned = LATE
            else:
                try:
                    returned = (call(*arguments), None)
                except (Exception, SystemExit) as exc:
                    returned = (None, exc)
            done(returned)
            del job, call, arguments, done, returned  # no reference to the last request while idle
