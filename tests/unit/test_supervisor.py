"""The supervisor prefixes output, restarts dying children, gives up, and stops every process it started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from xgate.supervisor import ChildSpec, Supervisor

PY = sys.executable

# A child that reports its PID, then sleeps until signalled.
SLEEPER = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(60)"


def _collector() -> tuple[list[str], Callable[[str], None]]:
    lines: list[str] = []
    return lines, lines.append


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    return True


def _fast(sink: Callable[[str], None], grace: float = 1.0) -> Supervisor:
    return Supervisor(output=sink, handle_signals=False, grace=grace, backoff_initial=0.05, backoff_max=0.2)


async def test_prefixes_stdout_and_stderr_lines() -> None:
    lines, sink = _collector()
    supervisor = _fast(sink)
    code = "import sys, time; print('out'); print('err', file=sys.stderr); sys.stdout.flush(); time.sleep(60)"
    task = asyncio.create_task(supervisor.run([ChildSpec("svc", [PY, "-c", code])]))
    await _until(lambda: "[svc] out" in lines and "[svc] err" in lines)
    supervisor.request_stop()
    assert await task == 0
    assert any(line.startswith("[xgate] svc stopped") for line in lines)


async def test_colored_prefix() -> None:
    lines, sink = _collector()
    supervisor = Supervisor(output=sink, handle_signals=False, color=True, grace=1)
    task = asyncio.create_task(supervisor.run([ChildSpec("svc", [PY, "-c", "print('hi')"], restart=False)]))
    assert await asyncio.wait_for(task, 5) == 0
    assert "\x1b[36m[svc]\x1b[0m hi" in lines


async def test_restarts_a_child_that_dies() -> None:
    lines, sink = _collector()
    supervisor = _fast(sink)
    task = asyncio.create_task(supervisor.run([ChildSpec("svc", [PY, "-c", SLEEPER])]))
    await _until(lambda: supervisor.pid_of("svc") is not None and any(line.startswith("[svc] pid") for line in lines))
    first = supervisor.pid_of("svc")
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await _until(lambda: sum(line.startswith("[svc] pid") for line in lines) == 2)
    assert supervisor.pid_of("svc") != first
    assert "[xgate] svc was killed by SIGKILL; restarting in 0.05 s" in lines
    supervisor.request_stop()
    assert await task == 0


async def test_gives_up_after_repeated_deaths() -> None:
    lines, sink = _collector()
    supervisor = Supervisor(output=sink, handle_signals=False, grace=1)  # default backoff: 0.2+0.4+0.8+1.6 s
    other = ChildSpec("other", [PY, "-c", SLEEPER])
    crasher = ChildSpec("crash", [PY, "-c", "import sys; print('boom'); sys.exit(3)"])
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(supervisor.run([other, crasher]), 9) == 1
    elapsed = asyncio.get_running_loop().time() - started
    assert 2.9 < elapsed < 8
    assert lines.count("[crash] boom") == 5
    assert "[xgate] crash exited with code 3; restarting in 0.2 s" in lines
    assert "[xgate] crash exited with code 3; restarting in 1.6 s" in lines
    assert "[xgate] crash exited with code 3; died 5 times within 60 s, giving up" in lines
    assert any(line.startswith("[xgate] other stopped") for line in lines)


async def test_stop_kills_children_ignoring_sigterm_and_grandchildren(tmp_path: Path) -> None:
    lines, sink = _collector()
    supervisor = _fast(sink, grace=0.5)
    stubborn = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('pid', os.getpid(), flush=True); time.sleep(60)"
    )
    # The parent shell-like child starts a grandchild that ignores SIGTERM too, and reports its PID.
    parent = f"import subprocess, sys, time;p = subprocess.Popen([sys.executable, '-c', {stubborn!r}]);time.sleep(60)"
    task = asyncio.create_task(
        supervisor.run([ChildSpec("stubborn", [PY, "-c", stubborn]), ChildSpec("parent", [PY, "-c", parent])])
    )
    await _until(lambda: len([line for line in lines if " pid " in f" {line}"]) == 2)
    pids = [int(line.rsplit(" ", 1)[1]) for line in lines if "] pid " in line]
    parent_pid = supervisor.pid_of("parent")
    assert parent_pid is not None
    pids.append(parent_pid)
    assert all(_alive(pid) for pid in pids)
    supervisor.request_stop()
    assert await asyncio.wait_for(task, 5) == 0
    assert not any(_alive(pid) for pid in pids)
    assert "[xgate] stubborn did not stop within 0.5 s; killing it" in lines
    assert "[xgate] parent did not stop within 0.5 s; killing it" in lines
    # Reverse start order: the later child is stopped first.
    stopped = [line for line in lines if line.startswith("[xgate]") and "stopped" in line]
    assert stopped[0].startswith("[xgate] parent") and stopped[1].startswith("[xgate] stubborn")


async def test_kills_orphaned_grandchild_when_child_dies() -> None:
    lines, sink = _collector()
    supervisor = _fast(sink)
    parent = f"import subprocess, sys, time;subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]); time.sleep(0.3)"
    task = asyncio.create_task(supervisor.run([ChildSpec("parent", [PY, "-c", parent], restart=False)]))
    assert await asyncio.wait_for(task, 5) == 0
    (pid_line,) = [line for line in lines if line.startswith("[parent] pid")]
    assert not _alive(int(pid_line.rsplit(" ", 1)[1]))


async def test_ready_line_orders_startup(tmp_path: Path) -> None:
    lines, sink = _collector()
    supervisor = _fast(sink)
    first = "import time; time.sleep(0.5); print('warming'); print('READY now', flush=True); time.sleep(9)"
    second = "print('second up', flush=True); import time; time.sleep(60)"
    task = asyncio.create_task(
        supervisor.run(
            [
                ChildSpec("first", [PY, "-c", first], ready_line="READY"),
                ChildSpec("second", [PY, "-c", second]),
            ]
        )
    )
    await _until(lambda: "[second] second up" in lines)
    assert lines.index("[first] READY now") < lines.index("[second] second up")
    supervisor.request_stop()
    assert await task == 0


async def test_ready_timeout_stops_everything() -> None:
    lines, sink = _collector()
    supervisor = _fast(sink)
    spec = ChildSpec("slow", [PY, "-c", SLEEPER], ready_line="never printed", ready_timeout=0.5)
    later = ChildSpec("later", [PY, "-c", SLEEPER])
    assert await asyncio.wait_for(supervisor.run([spec, later]), 5) == 1
    assert "[xgate] slow not ready within 0.5 s; stopping" in lines
    assert not any(line.startswith("[later]") for line in lines)


async def test_child_ending_before_ready_fails_fast() -> None:
    lines, sink = _collector()
    supervisor = _fast(sink)
    spec = ChildSpec("bad", [PY, "-c", "raise SystemExit(2)"], restart=False, ready_line="READY")
    assert await asyncio.wait_for(supervisor.run([spec]), 5) == 1
    assert "[xgate] bad exited with code 2 before it was ready; stopping" in lines


async def test_a_start_that_fails_is_not_retried() -> None:
    # A taken port or a bad flag fails the same way five times: one message, then everything stops.
    lines, sink = _collector()
    supervisor = _fast(sink)
    first = ChildSpec("first", [PY, "-c", SLEEPER])
    bad = ChildSpec("bad", [PY, "-c", "print('port 1 is taken', flush=True); raise SystemExit(2)"], ready_line="ok")
    later = ChildSpec("later", [PY, "-c", SLEEPER])
    assert await asyncio.wait_for(supervisor.run([first, bad, later]), 10) == 1
    assert lines.count("[bad] port 1 is taken") == 1
    assert "[xgate] bad exited with code 2 before it was ready; stopping" in lines
    assert not any("restarting" in line for line in lines)
    assert not any(line.startswith("[later]") for line in lines)
    assert any(line.startswith("[xgate] first stopped") for line in lines)
    assert lines[-1] == "[xgate] all stopped: no process of ours is left running"


async def test_sigterm_to_supervisor_stops_it() -> None:
    lines, sink = _collector()
    supervisor = Supervisor(output=sink, grace=1)
    task = asyncio.create_task(supervisor.run([ChildSpec("svc", [PY, "-c", SLEEPER])]))
    await _until(lambda: any(line.startswith("[svc] pid") for line in lines))
    pid = supervisor.pid_of("svc")
    assert pid is not None
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 5) == 0
    assert not _alive(pid)


async def test_env_is_added_to_ours() -> None:
    lines, sink = _collector()
    supervisor = _fast(sink)
    code = "import os; print(os.environ['XGATE_TEST_VAR'], 'PATH' in os.environ)"
    spec = ChildSpec("env", [PY, "-c", code], env={"XGATE_TEST_VAR": "hello"}, restart=False)
    assert await asyncio.wait_for(supervisor.run([spec]), 5) == 0
    assert "[env] hello True" in lines


@pytest.mark.parametrize("code", [0, 4])
async def test_all_one_shot_children_finishing_ends_run(code: int) -> None:
    _, sink = _collector()
    supervisor = _fast(sink)
    spec = ChildSpec("once", [PY, "-c", f"raise SystemExit({code})"], restart=False)
    assert await asyncio.wait_for(supervisor.run([spec]), 5) == (0 if code == 0 else 1)


async def test_children_die_with_a_killed_supervisor() -> None:
    # Runs a supervisor in a separate process, SIGKILLs that process, and expects its child to follow.
    script = (
        "import asyncio, sys; from xgate.supervisor import ChildSpec, Supervisor;"
        f"asyncio.run(Supervisor().run([ChildSpec('svc', [sys.executable, '-c', {SLEEPER!r}])]))"
    )
    proc = await asyncio.create_subprocess_exec(PY, "-c", script, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode().strip()
        assert line.startswith("[svc] pid ")
        child = int(line.rsplit(" ", 1)[1])
        assert _alive(child)
        proc.kill()
        await proc.wait()
        await _until(lambda: not _alive(child), timeout=3)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
