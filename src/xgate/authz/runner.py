"""Runs one policy for one request under a timeout and turns every failure into the failure answer.

Where a policy runs (the choice is made once, at load time, by policy._mode and pure.impurity). The service calls
`run_blocking` from a thread of its gRPC server; `run` calls it from a coroutine, through a worker thread.
- `async def`: awaited on the event loop under `asyncio.timeout` (what `asyncio.wait_for` does, without the
  extra task per call). A coroutine that blocks the loop cannot be interrupted; that is the author's contract.
- plain functions: in the policy pool (pool.py: bounded, its answers handed back to the loop in batches), waited
  for under the same timeout. A hung call keeps its thread (Python cannot kill a thread) but the request is
  answered at the deadline; when every thread hangs, later calls time out in the queue (and are dropped, not
  run) and get the failure answer, and the service keeps answering.
- `@inline` plain functions: called in the calling thread, timed, and a late answer is discarded: no hop to
  the pool and back.
- plain functions proven to only read their arguments (`LoadedPolicy.proven`, see pure.py): inline too, but
  a call that takes longer than `loop_budget` (5 ms: Python's switch interval, after which a pool thread would
  have let the loop run) sends that function to the pool for good, with a warning: the proof rules out I/O
  and endless loops, not slow code.

Outcomes, counted per policy by the service: `allowed` and `denied` are the policy's own answers; `errors`
(raised, returned something else than Allow/Deny) and `timeouts` get the failure answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeAlias

from xgate.authz.policy import Allow, Decision, Deny, LoadedPolicy, Mode, Request
from xgate.authz.pool import LATE, PolicyPool, Returned

log = logging.getLogger("xgate.authz")

Outcome: TypeAlias = Literal["allowed", "denied", "errors", "timeouts"]
OUTCOMES: tuple[Outcome, ...] = ("allowed", "denied", "errors", "timeouts")
# run_blocking waits this much past the timeout for a coroutine policy: the loop cancels it at the timeout.
_LOOP_GRACE = 0.05
LOOP_BUDGET = 0.005  # a proven policy's call longer than this goes to the pool from then on
# How run_blocking waits for a policy running elsewhere: (future, timeout) -> its result.
Wait: TypeAlias = Callable[[concurrent.futures.Future[Any], float], Any]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to send and why: the policy's own decision, or the failure answer after an error/timeout."""

    decision: Decision
    outcome: Outcome


class PolicyRunner:
    """Calls policies. `failure` is the answer when a policy fails: Deny(403) (fail closed) unless configured.

    Resources: the policy pool, `threads` workers (default min(32, cores + 4)), started on first use; `close()`
    stops them without waiting for hung calls (a later call starts a new pool).
    """

    def __init__(
        self,
        *,
        timeout: float = 0.1,
        failure: Decision | None = None,
        threads: int | None = None,
        loop_budget: float = LOOP_BUDGET,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.timeout = timeout
        self.loop_budget = loop_budget
        # Functions of proven policies that overran loop_budget once: they run in the pool from then on (a reload
        # of their module makes new functions, which get a new chance).
        self._demoted: set[Callable[..., Any]] = set()
        self.failure: Decision = failure if failure is not None else Deny(403)
        self._threads = threads or min(32, (os.cpu_count() or 1) + 4)
        self.pool = PolicyPool(self._threads)

    def place(self, policy: LoadedPolicy) -> Mode:
        """How `policy` runs now: its mode, or "thread" for a proven one that overran the loop budget."""
        if policy.proven and policy.call in self._demoted:
            return "thread"
        return policy.mode

    def close(self) -> None:
        pool, self.pool = self.pool, PolicyPool(self._threads)
        pool.close()

    async def run(self, policy: LoadedPolicy, request: Request, claims: dict[str, Any]) -> Verdict:
        """`run_blocking` from a coroutine (in a worker thread, with this loop for async policies)."""
        return await asyncio.to_thread(self.run_blocking, policy, request, claims, asyncio.get_running_loop())

    def run_blocking(
        self,
        policy: LoadedPolicy,
        request: Request,
        claims: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        wait: Wait = concurrent.futures.Future.result,
    ) -> Verdict:
        """The policy's decision, or the failure answer; never raises. Called from a thread that is not `loop`'s
        (the service calls it from its gRPC server's): an inline policy is called here, a plain one in the
        policy pool, a coroutine on `loop`; `wait(future, timeout)` waits for those two."""
        started = time.perf_counter()
        mode = self.place(policy)
        try:
            if mode == "inline":
                return self.run_here(policy, request, claims)
            if mode == "async":
                future = asyncio.run_coroutine_threadsafe(self._awaited(policy, request, claims), loop)
                try:
                    result = wait(future, self.timeout + _LOOP_GRACE)
                finally:
                    future.cancel()  # a no-op once done; stops a call the loop was too busy to time out
            else:
                pooled: concurrent.futures.Future[Any] = concurrent.futures.Future()
                deadline = time.monotonic() + self.timeout
                self.pool.submit(deadline, policy.call, (request, claims), partial(_settle, pooled))
                result = wait(pooled, self.timeout)
        except (TimeoutError, concurrent.futures.CancelledError) as exc:
            if time.perf_counter() - started >= self.timeout:
                return self._timed_out(policy, request, started)
            return self._error(policy, request, exc)
        except (Exception, SystemExit) as exc:
            return self._error(policy, request, exc)
        return self._verdict(policy, request, result, started)

    def run_here(self, policy: LoadedPolicy, request: Request, claims: dict[str, Any]) -> Verdict:
        """An `@inline` policy called in this thread (the event loop, for HTTP checks: see http.py)."""
        started = time.perf_counter()
        raised: BaseException | None = None
        try:
            result = policy.call(request, claims)
        except (Exception, SystemExit) as exc:
            raised = exc
        if policy.proven and time.perf_counter() - started > self.loop_budget and policy.call not in self._demoted:
            self._demoted.add(policy.call)
            log.warning(
                "policy %s (%s) took %.1f ms inline, over the %.0f ms a policy proven pure may hold the check's "
                "thread; it runs in the policy pool from now on",
                policy.name, policy.path, (time.perf_counter() - started) * 1e3, self.loop_budget * 1e3,
            )  # fmt: skip
        if raised is not None:
            return self._error(policy, request, raised)
        return self._verdict(policy, request, result, started)

    async def run_on_loop(self, policy: LoadedPolicy, request: Request, claims: dict[str, Any]) -> Verdict:
        """`run_blocking` for a caller on the event loop: a coroutine is awaited here, a plain function runs in
        the policy pool meanwhile, both under the timeout; never raises."""
        mode = self.place(policy)
        if mode == "inline":
            return self.run_here(policy, request, claims)
        if mode == "thread":
            answered: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
            self.run_later(policy, request, claims, partial(_resolve, answered))
            return await answered
        started = time.perf_counter()
        try:
            result = await self._awaited(policy, request, claims)
        except TimeoutError:
            return self._timed_out(policy, request, started)
        except (Exception, SystemExit) as exc:
            return self._error(policy, request, exc)
        return self._verdict(policy, request, result, started)

    def run_later(
        self, policy: LoadedPolicy, request: Request, claims: dict[str, Any], reply: Callable[[Verdict], None]
    ) -> None:
        """A plain policy for a caller on the event loop, without a task: runs it in the policy pool and calls
        `reply(verdict)` once, on the loop: with its answer, or with the failure answer at the timeout."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        pending = _Pending(self, policy, request, reply, started)
        pending.timer = loop.call_at(loop.time() + self.timeout, pending.expire)
        deadline = time.monotonic() + self.timeout
        self.pool.submit(deadline, policy.call, (request, claims), self.pool.on_loop(loop, pending.answer))

    async def _awaited(self, policy: LoadedPolicy, request: Request, claims: dict[str, Any]) -> Any:
        async with asyncio.timeout(self.timeout):
            return await policy.call(request, claims)

    def _verdict(self, policy: LoadedPolicy, request: Request, result: Any, started: float) -> Verdict:
        if time.perf_counter() - started > self.timeout:
            # An inline policy, or a coroutine that swallowed its cancellation: the answer came too late.
            if inspect.iscoroutine(result):
                result.close()
            return self._timed_out(policy, request, started)
        if isinstance(result, Allow):
            return Verdict(result, "allowed")
        if isinstance(result, Deny):
            return Verdict(result, "denied")
        if inspect.iscoroutine(result):
            result.close()  # a plain function returned a coroutine: it was never going to be awaited
        log.error(
            "policy %s (%s) on route %s returned %s, not Allow or Deny; answering %s",
            policy.name, policy.path, request.route, _describe(result), _answer(self.failure),
        )  # fmt: skip
        return Verdict(self.failure, "errors")

    def _timed_out(self, policy: LoadedPolicy, request: Request, started: float) -> Verdict:
        elapsed_ms = (time.perf_counter() - started) * 1e3
        how = " (inline: it held the check's thread)" if policy.mode == "inline" else ""
        log.warning(
            "policy %s (%s) on route %s took %.0f ms, over its %.0f ms timeout%s; answering %s",
            policy.name, policy.path, request.route, elapsed_ms, self.timeout * 1e3, how, _answer(self.failure),
        )  # fmt: skip
        return Verdict(self.failure, "timeouts")

    def _error(self, policy: LoadedPolicy, request: Request, exc: BaseException) -> Verdict:
        log.error(
            "policy %s (%s) on route %s raised %s: %s; answering %s",
            policy.name, policy.path, request.route, type(exc).__name__, exc, _answer(self.failure),
            exc_info=exc,
        )  # fmt: skip
        return Verdict(self.failure, "errors")


class _Pending:
    """One check waiting for the policy pool (run_later): the first of its answer and its timeout replies."""

    __slots__ = ("policy", "reply", "request", "runner", "started", "timer")

    def __init__(
        self,
        runner: PolicyRunner,
        policy: LoadedPolicy,
        request: Request,
        reply: Callable[[Verdict], None],
        started: float,
    ) -> None:
        self.runner, self.policy, self.request, self.reply, self.started = runner, policy, request, reply, started
        self.timer: asyncio.TimerHandle | None = None

    def answer(self, returned: Returned) -> None:
        if self.timer is None:  # answered already
            return
        self.timer.cancel()
        self.timer = None
        result, raised = returned
        runner, policy, request = self.runner, self.policy, self.request
        if returned is LATE:
            self.reply(runner._timed_out(policy, request, self.started))
        elif raised is not None:
            self.reply(runner._error(policy, request, raised))
        else:
            self.reply(runner._verdict(policy, request, result, self.started))

    def expire(self) -> None:
        if self.timer is None:
            return
        self.timer = None
        self.reply(self.runner._timed_out(self.policy, self.request, self.started))


def _resolve(future: asyncio.Future[Verdict], verdict: Verdict) -> None:
    if not future.done():  # its waiter may have been cancelled
        future.set_result(verdict)


def _settle(future: concurrent.futures.Future[Any], returned: Returned) -> None:
    """The pool's answer for a check waiting in a gRPC thread (run_blocking)."""
    result, raised = returned
    if raised is not None:
        future.set_exception(raised)
    else:
        future.set_result(result)


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


def _answer(decision: Decision) -> str:
    return "allow (fail open)" if isinstance(decision, Allow) else f"deny {decision.status}"
