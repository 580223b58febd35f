"""Runs, prefixes the output of, restarts and finally stops the child processes of `xgate up`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xgate.errors import ProxyError

_COLORS = ("36", "33", "35", "32", "34", "31")
_POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class ChildSpec:
    """One child process: `env` entries are added to our environment; `ready_line` is a substring of
    the output line that says the child is ready, awaited before the next child starts."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    restart: bool = True
    ready_line: str | None = None
    ready_timeout: float = 30.0


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` prefixed so Linux SIGTERMs the child when this process dies (even by SIGKILL).

    Without it a crashed supervisor would leave Envoy and the services running, holding their ports.
    util-linux's setpriv sets the signal and execs the command. A Python preexec_fn would do the same
    but runs Python between fork and exec, which crashed children (SIGSEGV) when gRPC threads were
    running in the parent. Without setpriv the command runs as is.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


async def pump_lines(stream: asyncio.StreamReader, sink: Callable[[str], None]) -> None:
    """Feed every line of `stream` to `sink` until EOF; overlong lines arrive in pieces, never fail."""
    while True:
        try:
            raw = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                sink(exc.partial.decode(errors="replace").rstrip("\r\n"))
            return
        except asyncio.LimitOverrunError as exc:
            raw = await stream.readexactly(exc.consumed)
        sink(raw.decode(errors="replace").rstrip("\r\n"))


async def wait_exit(proc: asyncio.subprocess.Process) -> int:
    """Wait until `proc` has exited and return its exit code.

    `proc.wait()` also waits for the child's output pipes to close, so a surviving grandchild that
    inherited them would keep it waiting; the exit code itself is known as soon as the child is reaped.
    """
    while proc.returncode is None:
        await asyncio.sleep(_POLL_INTERVAL)
    return proc.returncode


async def terminate(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM `proc` (ours, by PID), SIGKILL it if it is still there after `grace` seconds, and reap it."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(wait_exit(proc), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await wait_exit(proc)


def find_program(name: str, package: str) -> str:
    """Path of `name` on PATH. Errors: ProxyError saying which Debian package to install."""
    found = shutil.which(name)
    if found is None:
        raise ProxyError(f"{name} not found: install Debian's {package} (apt-get install {package})")
    return found


def log_tail(path: Path, lines: int = 20, head: int = 0) -> str:
    """The last `lines` lines of a child's log (after its first `head` lines, where a program names a bad
    flag before its usage text), indented for an error message; "" when there is none."""
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").splitlines()
        if len(text) > head + lines:
            text = [*text[:head], "...", *text[-lines:]] if head else text[-lines:]
        if text:
            return "\n  " + "\n  ".join(text)
    return ""


class OwnedProcess:
    """A server process this one started (Envoy; etcd, redis-server in tests): its PID and exit code, and stopping or
    killing it by that PID. Safe to use before the start and after the end."""

    _proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def _spawn(self, argv: Sequence[str], stdout: Any) -> None:
        """Start `argv` in its own session, dying with this process, stdin closed, stderr with stdout."""
        self._proc = await asyncio.create_subprocess_exec(
            *die_with_parent(argv),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM it, SIGKILL it after `grace` seconds; returns its exit code. Safe to call twice."""
        if self._proc is not None:
            await terminate(self._proc, grace)
        return self.returncode

    async def kill(self) -> None:
        """SIGKILL it and wait until it is gone (a crash, for fault tests)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await wait_exit(proc)


def _group_alive(pgid: int) -> bool:
    """Whether process group `pgid` still has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    # kill(0) also succeeds for zombies that an init which does not reap would keep forever.
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # Fields after the ")" closing the command name: state, ppid, pgrp, ...
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass
class _Child:
    spec: ChildSpec
    prefix: str
    proc: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    monitor: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    deaths: deque[float] = field(default_factory=deque)
    last_code: int | None = None


class Supervisor:
    """Starts children in order, restarts the ones that die, stops them all in reverse order.

    `output` receives every line (children's prefixed with "[name] ", our own with "[xgate] ");
    by default it goes to stdout. Each child runs in its own process group, which is what we signal,
    so its own children stop with it.
    """

    def __init__(
        self,
        *,
        grace: float = 5.0,
        output: Callable[[str], None] | None = None,
        color: bool = False,
        handle_signals: bool = True,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        max_deaths: int = 5,
        death_window: float = 60.0,
    ) -> None:
        self._grace = grace
        self._output = output or _print_line
        self._color = color
        self._handle_signals = handle_signals
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._max_deaths = max_deaths
        self._death_window = death_window
        self._stop = asyncio.Event()
        self._children: list[_Child] = []
        self._exit_code = 0

    def request_stop(self) -> None:
        """Make `run()` stop every child and return 0 (unless it already decided to fail)."""
        self._stop.set()

    def pid_of(self, name: str) -> int | None:
        """PID of the current process of child `name` (changes across restarts)."""
        for child in self._children:
            if child.spec.name == name and child.proc is not None:
                return child.proc.pid
        return None

    async def run(self, children: Sequence[ChildSpec]) -> int:
        """Run `children` until stopped; returns 0 after a requested stop, 1 after giving up."""
        if self._children:
            raise RuntimeError("a Supervisor runs only once")
        loop = asyncio.get_running_loop()
        installed = self._install_signal_handlers(loop)
        try:
            try:
                for index, spec in enumerate(children):
                    if self._stop.is_set():
                        break
                    child = _Child(spec, self._make_prefix(spec.name, index))
                    self._children.append(child)
                    await self._spawn(child)
                    child.monitor = asyncio.create_task(self._watch(child))
                    if spec.ready_line is not None and not await self._wait_ready(child):
                        self._exit_code = 1
                        break
                else:
                    await self._stop.wait()
            finally:
                await self._shutdown()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
        return self._exit_code

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        if not self._handle_signals:
            return installed
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Only the main thread may own signal handlers; elsewhere the caller uses request_stop().
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(signum, self.request_stop)
                installed.append(signum)
        return installed

    def _make_prefix(self, name: str, index: int) -> str:
        if self._color:
            return f"\x1b[{_COLORS[index % len(_COLORS)]}m[{name}]\x1b[0m "
        return f"[{name}] "

    def _say(self, message: str) -> None:
        self._output(f"[xgate] {message}")

    async def _spawn(self, child: _Child) -> None:
        spec = child.spec
        env = None if spec.env is None else {**os.environ, **spec.env}
        proc = await asyncio.create_subprocess_exec(
            *die_with_parent(spec.argv),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        child.proc = proc
        assert proc.stdout is not None
        child.pump = asyncio.create_task(pump_lines(proc.stdout, lambda line: self._child_line(child, line)))

    def _child_line(self, child: _Child, line: str) -> None:
        self._output(child.prefix + line)
        ready_line = child.spec.ready_line
        if ready_line is not None and not child.ready.is_set() and ready_line in line:
            child.ready.set()

    async def _wait_ready(self, child: _Child) -> bool:
        waits = [asyncio.create_task(event.wait()) for event in (child.ready, child.finished, self._stop)]
        try:
            await asyncio.wait(waits, timeout=child.spec.ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        if child.ready.is_set() or self._stop.is_set():
            return True
        if child.finished.is_set():
            code = child.last_code
            ended = "ended" if code is None else _describe_exit(code)
            self._say(f"{child.spec.name} {ended} before it was ready; stopping")
        else:
            self._say(f"{child.spec.name} not ready within {child.spec.ready_timeout} s; stopping")
        return False

    async def _watch(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        while True:
            assert child.proc is not None
            code = await wait_exit(child.proc)
            child.last_code = code
            if self._stop.is_set():
                return
            # Orphaned grandchildren would hold ports and the output pipe of the next attempt.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            if child.pump is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(child.pump), 1.0)
            name = child.spec.name
            if child.spec.ready_line is not None and not child.ready.is_set():
                # A start that fails (a taken port, a bad flag) fails the same way again: _wait_ready says
                # why and stops, rather than five restarts repeating one message.
                child.finished.set()
                return
            if not child.spec.restart:
                self._say(f"{name} {_describe_exit(code)}")
                child.finished.set()
                self._check_all_finished()
                return
            now = loop.time()
            child.deaths.append(now)
            while child.deaths and child.deaths[0] < now - self._death_window:
                child.deaths.popleft()
            if len(child.deaths) >= self._max_deaths:
                self._say(
                    f"{name} {_describe_exit(code)}; died {len(child.deaths)} times within "
                    f"{self._death_window:g} s, giving up"
                )
                child.finished.set()
                self._exit_code = 1
                self._stop.set()
                return
            delay = min(self._backoff_initial * 2 ** (len(child.deaths) - 1), self._backoff_max)
            self._say(f"{name} {_describe_exit(code)}; restarting in {delay:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
                return
            await self._spawn(child)

    def _check_all_finished(self) -> None:
        if all(child.finished.is_set() for child in self._children):
            if any(child.last_code != 0 for child in self._children):
                self._exit_code = 1
            self._stop.set()

    async def _shutdown(self) -> None:
        self._stop.set()
        # Cancelling a watcher mid-spawn lets asyncio kill the half-started process itself.
        monitors = [child.monitor for child in self._children if child.monitor is not None]
        for task in monitors:
            task.cancel()
        await asyncio.gather(*monitors, return_exceptions=True)
        for child in reversed(self._children):
            await self._stop_child(child)
        if self._children:
            self._say("all stopped: no process of ours is left running")

    async def _stop_child(self, child: _Child) -> None:
        proc = child.proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session made the child the leader of a group with its PID
        was_running = proc.returncode is None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait_exit(proc), max(deadline - loop.time(), 0))
        # The leader may be gone while members of its group still shut down; give them the rest.
        while _group_alive(pgid) and loop.time() < deadline:
            await asyncio.sleep(_POLL_INTERVAL)
        if _group_alive(pgid) or proc.returncode is None:
            self._say(f"{child.spec.name} did not stop within {self._grace:g} s; killing it")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        code = await wait_exit(proc)
        if child.pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.pump, 1.0)
        if was_running:
            self._say(f"{child.spec.name} stopped ({_describe_exit(code)})")


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
