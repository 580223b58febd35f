"""A gateway under test as local processes: `xgate controlplane` following a config file, the authz, dyeing and
ratelimit services it configures, and a real Envoy (`xgate envoy`), each a child process stopped by its PID.

Synchronous on purpose, like the containers backend: a test needs no event loop to use it, and the children
run outside the test's process, as deployed (see services.py for why that matters under load).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from xgate.sources.revision import revision_of
from xgate.testing.gateway import write_atomic
from xgate.testing.ports import free_ports
from xgate.testing.stack import SERVICES, ConfigRejected, complete_config, converged, wait_until

_CONTROLPLANE_READY = re.compile(r"control plane ready: xds [^:\s]+:(\d+) status http://[^:\s]+:(\d+)")


class _Child:
    """One child process; a thread reads its output (a full pipe would stall it) and keeps the last lines."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.ready_match: re.Match[str] | None = None
        self._ready = threading.Event()
        self._pattern: re.Pattern[str] | None = None
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env))
        self._reader = threading.Thread(target=self._read, name=f"xgate-{name}-output", daemon=True)

    def start(self, ready: re.Pattern[str] | None) -> None:
        self._pattern = ready
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if self._pattern is not None and self.ready_match is None:
                self.ready_match = self._pattern.search(line)
                if self.ready_match is not None:
                    self._ready.set()
        self._ready.set()  # ended: whoever waits learns it now

    def wait_ready(self, timeout: float) -> re.Match[str]:
        """The match of the ready line. Errors: RuntimeError when the child ended first, TimeoutError."""
        self._ready.wait(timeout)
        if self.ready_match is not None:
            return self.ready_match
        code = self.process.poll()
        tail = "\n".join(list(self.lines)[-20:])
        if code is not None:
            raise RuntimeError(f"xgate {self.name} exited with {code} before it was ready:\n{tail}")
        raise TimeoutError(f"xgate {self.name} was not ready after {timeout} s:\n{tail}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


class LocalGateway:
    """`with LocalGateway(work_dir, pythonpath=[...]) as gateway:` a whole gateway on 127.0.0.1 (see
    stack.GatewayUnderTest); `pythonpath`: folders the authz service imports Python policies from, besides this
    process's sys.path."""

    def __init__(self, work_dir: Path, *, pythonpath: Sequence[Path] = (), start_timeout: float = 60.0) -> None:
        self._work_dir = work_dir
        self._config = work_dir / "gateway.yaml"
        self._pythonpath = [str(path) for path in pythonpath]
        self._start_timeout = start_timeout
        self._children: list[_Child] = []
        self._status_port = 0
        self._services: dict[str, str] = {}
        self._listener_port = 0
        self._admin_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener_port}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self._status_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self._admin_port}"

    @property
    def upstream_host(self) -> str:
        return "127.0.0.1"

    @property
    def listener_port(self) -> int:
        return self._listener_port

    @property
    def services(self) -> Mapping[str, str]:
        return dict(self._services)

    def start(self) -> LocalGateway:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self._listener_port, self._admin_port = free_ports(2)
        self._config.write_text("xgate: v1\n", encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*self._pythonpath, *(p for p in sys.path if p)])}
        me = [sys.executable, "-m", "xgate"]
        try:
            # --allow-empty: a test starts from nothing and replaces whole configs, which the guard would hold back.
            argv = [*me, "controlplane", "-f", str(self._config), "--xds", "127.0.0.1:0", "--status", "127.0.0.1:0"]
            argv.append("--allow-empty")
            plane = self._spawn("controlplane", argv, env, _CONTROLPLANE_READY).wait_ready(self._start_timeout)
            xds = f"127.0.0.1:{plane.group(1)}"
            self._status_port = int(plane.group(2))
            # The services and Envoy start together: each needs only the control plane.
            services = {
                name: self._spawn(
                    name,
                    [*me, name, "--xds", xds, "--listen", "127.0.0.1:0", "--status", "off"],
                    env,
                    re.compile(rf"xgate {name} ready: grpc [^:\s]+:(\d+)"),
                )
                for name in SERVICES
            }
            envoy = [*me, "envoy", "--xds", xds, "--admin-port", str(self._admin_port), "--node-id", "xgate-test-envoy"]
            self._spawn("envoy", [*envoy, "--concurrency", "1"], env, None)  # awaited through the status API
            for name, child in services.items():
                self._services[name] = f"127.0.0.1:{child.wait_ready(self._start_timeout).group(1)}"
            wait_until(
                self.status_url,
                lambda report: converged(report, envoys=1, services=len(SERVICES)),
                "Envoy and the services to connect to the control plane",
                self._start_timeout,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str], ready: re.Pattern[str] | None) -> _Child:
        child = _Child(name, argv, env)
        self._children.append(child)
        child.start(ready)
        return child

    def apply(self, config: str | Mapping[str, Any], timeout: float = 30.0) -> str:
        """Save the config (atomically, as editors do) and wait until every Envoy and service ACKed it."""
        text = complete_config(config, "127.0.0.1", self._listener_port)
        revision = revision_of(text)
        write_atomic(self._config, text)

        def done(report: dict[str, Any]) -> bool:
            state = report["config"]
            if state["rejected_revision"] == revision:
                raise ConfigRejected("the gateway refused the config:\n" + "\n".join(state["issues"]))
            refused = state.get("refused")
            if refused and refused["revision"] == revision:
                raise ConfigRejected(f"xgate {refused['service']} refused the config: {refused['message']}")
            return bool(state["applied_revision"] == revision and converged(report, envoys=1, services=3))

        wait_until(self.status_url, done, f"revision {revision} to reach Envoy and every service", timeout)
        return revision

    def logs(self) -> dict[str, list[str]]:
        """The last lines each child printed (for a failing test's report)."""
        return {child.name: list(child.lines) for child in self._children}

    def stop(self) -> None:
        # Envoy first, the control plane last: the services and Envoy keep their config until they stop.
        for child in reversed(self._children):
            child.stop()
        self._children.clear()

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["LocalGateway"]
