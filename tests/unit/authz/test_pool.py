"""The policy pool: answers go back to the loop in batches (one wake-up for all answers finished meanwhile), a call
still queued past its deadline is dropped, a raise is passed on, hung workers do not keep the process; and the
runner's task-less path (run_later) replies exactly once, with the answer or at the timeout."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from xgate.authz import Allow, Deny, LoadedPolicy, PolicyRunner, Request
from xgate.authz.pool import LATE, PolicyPool, Returned
from xgate.authz.runner import Verdict

REQUEST = Request(method="GET", path="/", headers={}, source="10.0.0.7", route="r")


def far() -> float:
    return time.monotonic() + 30


async def test_answers_finished_meanwhile_come_back_with_one_wake_up(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    wake_ups = []
    real = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any) -> Any:
        wake_ups.append(callback)
        return real(callback, *args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    pool = PolicyPool(4)
    got: list[Returned] = []
    try:
        for index in range(20):
            pool.submit(far(), lambda n: n * 2, (index,), pool.on_loop(loop, got.append))
        # The loop is held here (as by a burst of requests) until every answer waits for it.
        deadline = time.monotonic() + 10
        while len(pool._answers.get(loop, ())) < 20:
            assert time.monotonic() < deadline, "the pool did not answer"
            time.sleep(0.001)
        assert got == []  # answers are delivered on the loop, not in the workers
        while len(got) < 20:
            await asyncio.sleep(0)
        assert sorted(result for result, _ in got) == [index * 2 for index in range(20)]
        assert len(wake_ups) == 1  # one wake-up of the loop for twenty answers
    finally:
        pool.close()


async def test_late_calls_are_dropped_raises_are_passed_on_and_workers_are_daemons() -> None:
    pool = PolicyPool(1, name="xgate-test-pool")
    release, called = threading.Event(), threading.Event()
    got: list[Returned] = []
    done = threading.Event()

    def record(returned: Returned) -> None:
        got.append(returned)
        if len(got) == 3:
            done.set()

    def boom() -> None:
        raise ValueError("policy bug")

    try:
        pool.submit(far(), release.wait, (10,), record)  # holds the only worker
        pool.submit(time.monotonic() + 0.05, called.set, (), record)  # due while it waits in the queue
        pool.submit(far(), boom, (), record)
        assert [thread.daemon for thread in threading.enumerate() if thread.name.startswith("xgate-test-pool")] == [
            True
        ]
        time.sleep(0.1)  # past the second call's deadline: what the test is about, not a wait for convergence
        release.set()
        assert done.wait(10)
        assert got[0] == (True, None)
        assert got[1] is LATE and not called.is_set()  # dropped: its check was answered at the deadline
        assert got[2][0] is None and isinstance(got[2][1], ValueError)
    finally:
        release.set()
        pool.close()


async def test_run_later_replies_once_at_the_timeout_and_ignores_the_late_answer() -> None:
    release = threading.Event()

    def hangs(request: Request, claims: dict[str, Any]) -> Allow:
        release.wait(10)
        return Allow()

    def denies(request: Request, claims: dict[str, Any]) -> Deny:
        return Deny(404, body=str(claims["n"]))

    runner = PolicyRunner(timeout=1.0, threads=1)  # one worker: answers come back in the order of the calls
    denying = LoadedPolicy("denies", "t:denies", denies, "thread")
    replies: list[Verdict] = []
    try:
        for n in range(3):
            verdict = await runner.run_on_loop(denying, REQUEST, {"n": n})
            assert (verdict.decision, verdict.outcome) == (Deny(404, body=str(n)), "denied")
        started = time.monotonic()
        runner.run_later(LoadedPolicy("hangs", "t:hangs", hangs, "thread"), REQUEST, {}, replies.append)
        while not replies:
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.01)
        assert time.monotonic() - started >= 1.0
        assert [(verdict.decision, verdict.outcome) for verdict in replies] == [(Deny(403), "timeouts")]
        release.set()
        # Behind the hung call in the worker's order: when this is answered, the late Allow has come back too.
        assert (await runner.run_on_loop(denying, REQUEST, {"n": 9})).outcome == "denied"
        assert len(replies) == 1  # the late answer was not replied a second time
    finally:
        release.set()
        runner.close()
