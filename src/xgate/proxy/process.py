"""Runs one real Envoy process and talks to its admin interface (for `xgate up` and the tests)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp
import yaml

from xgate.errors import ProxyError
from xgate.proxy.bootstrap import find_envoy
from xgate.supervisor import OwnedProcess, die_with_parent, pump_lines

# Where Envoy's merged stdout/stderr goes: None inherits ours, a callable gets each line, a file gets bytes.
OutputSink = Callable[[str], None] | IO[Any] | None

_POLL_INTERVAL = 0.05


class EnvoyProcess(OwnedProcess):
    """One Envoy process started from a bootstrap dict; stop it with `stop()` or use `async with`.

    Hot restart is always disabled, so several Envoys (tests, a fleet) can share a machine without
    picking distinct base ids.

    Errors: ProxyError when Envoy is missing, exits during startup, or its admin does not answer.
    Resources: a child process, a reader task (when `output` is a callable), an HTTP client session.
    """

    def __init__(
        self,
        bootstrap: Mapping[str, Any],
        work_dir: Path | str,
        *,
        concurrency: int | None = None,
        log_level: str = "warn",
        extra_args: Sequence[str] = (),
        output: OutputSink = None,
        envoy_path: str | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._work_dir = Path(work_dir)
        self._concurrency = concurrency
        self._log_level = log_level
        self._extra_args = tuple(extra_args)
        self._output = output
        self._envoy_path = envoy_path
        self._reader: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._admin_url: str | None = None

    @property
    def bootstrap_path(self) -> Path:
        return self._work_dir / "envoy-bootstrap.yaml"

    @property
    def admin_address_path(self) -> Path:
        return self._work_dir / "envoy-admin-address.txt"

    @property
    def admin_url(self) -> str:
        """`http://host:port` of the admin interface, known once `start()` returned."""
        if self._admin_url is None:
            raise ProxyError("Envoy's admin address is not known: call start() first")
        return self._admin_url

    def argv(self) -> list[str]:
        """The command line `start()` runs."""
        args = [
            self._envoy_path or find_envoy(),
            "-c",
            str(self.bootstrap_path),
            "--disable-hot-restart",
            "--admin-address-path",
            str(self.admin_address_path),
            "--log-level",
            self._log_level,
        ]
        if self._concurrency is not None:
            args += ["--concurrency", str(self._concurrency)]
        return args + list(self._extra_args)

    async def start(self, timeout: float = 10.0) -> None:
        """Write the bootstrap, start Envoy and wait until it has bound its admin port.

        Envoy answers admin requests before it has any config; use `wait_ready()` for LIVE.
        """
        if self._proc is not None:
            raise ProxyError("this EnvoyProcess was already started")
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap_path.write_text(yaml.safe_dump(dict(self._bootstrap), sort_keys=False))
        # A stale file from an earlier run would hand us a dead port.
        self.admin_address_path.unlink(missing_ok=True)
        if callable(self._output):
            stdout: int | IO[Any] | None = asyncio.subprocess.PIPE
        else:
            stdout = self._output
        self._proc = await asyncio.create_subprocess_exec(
            *die_with_parent(self.argv()),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=asyncio.subprocess.STDOUT if stdout is not None else None,
            # Own session: a Ctrl-C on the terminal reaches our handler, and we stop Envoy in order.
            start_new_session=True,
        )
        if callable(self._output):
            assert self._proc.stdout is not None
            self._reader = asyncio.create_task(pump_lines(self._proc.stdout, self._output))
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            self._admin_url = await self._wait_admin_address(timeout)
        except BaseException:
            await self.stop(grace=1)
            raise

    async def _wait_admin_address(self, timeout: float) -> str:
        assert self._proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._proc.returncode is not None:
                raise ProxyError(f"Envoy exited with code {self._proc.returncode} during startup")
            with contextlib.suppress(FileNotFoundError):
                address = self.admin_address_path.read_text().strip()
                # Envoy writes the file in one go, but we may read it between create and write.
                if address:
                    host, _, port = address.rpartition(":")
                    return f"http://{host}:{port}"
            if loop.time() >= deadline:
                raise ProxyError(f"Envoy did not report its admin address within {timeout} s")
            await asyncio.sleep(_POLL_INTERVAL)

    async def admin_get(self, path: str) -> tuple[int, str]:
        """GET an admin path (e.g. "/stats?format=json"); returns (status, body)."""
        if self._session is None:
            raise ProxyError("Envoy is not running")
        async with self._session.get(self.admin_url + path) as response:
            return response.status, await response.text()

    async def stat(self, name: str) -> int:
        """One counter or gauge by its full name (e.g. "listener_manager.listener_modified"); 0 when Envoy has not
        created it (it creates many on first use)."""
        status, body = await self.admin_get(f"/stats?filter=^{re.escape(name)}$")
        if status != 200:
            raise ProxyError(f"Envoy's admin answered {status} for stat {name}: {body[:200]}")
        return next((int(line.partition(": ")[2]) for line in body.splitlines() if line.startswith(name + ":")), 0)

    async def server_state(self) -> str:
        """Envoy's server state from admin `/ready`: PRE_INITIALIZING, INITIALIZING, LIVE or DRAINING."""
        _, body = await self.admin_get("/ready")
        return body.strip()

    async def wait_admin(self, timeout: float = 10.0) -> str:
        """Wait until the admin interface answers; returns the server state.

        With ADS and no reachable control plane Envoy stays PRE_INITIALIZING until CDS's initial fetch
        times out, then INITIALIZING until LDS's does (15 s each by default); its admin answers at once.
        """
        return await self._poll(timeout, lambda state: True, "answer on its admin interface")

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until Envoy reports LIVE (all initial xDS resources received or timed out)."""
        await self._poll(timeout, lambda state: state == "LIVE", "become LIVE")

    async def _poll(self, timeout: float, done: Callable[[str], bool], what: str) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        state = "no answer"
        while True:
            if self.returncode is not None:
                raise ProxyError(f"Envoy exited with code {self.returncode} before it would {what}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                state = await self.server_state()
                if done(state):
                    return state
            if loop.time() >= deadline:
                raise ProxyError(f"Envoy did not {what} within {timeout} s (state: {state})")
            await asyncio.sleep(_POLL_INTERVAL)

    async def listener_port(self, name: str) -> int | None:
        """The port listener `name` is bound to (useful for port 0), or None if Envoy has no such listener.

        Envoy binds the port before it is LIVE but accepts connections only once LIVE (see wait_ready).
        """
        status, body = await self.admin_get("/listeners?format=json")
        if status != 200:
            raise ProxyError(f"admin /listeners answered {status}: {body[:200]}")
        for listener in yaml.safe_load(body).get("listener_statuses", []):
            if listener.get("name") == name:
                port = listener["local_address"]["socket_address"].get("port_value", 0)
                return int(port)
        return None

    async def wait_listener_port(self, name: str, timeout: float = 10.0) -> int:
        """Wait until listener `name` exists (e.g. after the control plane sent it) and return its port."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            port = await self.listener_port(name)
            if port is not None:
                return port
            if self.returncode is not None:
                raise ProxyError(f"Envoy exited with code {self.returncode}")
            if loop.time() >= deadline:
                raise ProxyError(f"Envoy has no listener {name!r} after {timeout} s")
            await asyncio.sleep(_POLL_INTERVAL)

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM Envoy, SIGKILL it after `grace` seconds; returns its exit code. Safe to call twice."""
        await super().stop(grace)
        if self._reader is not None:
            await self._reader
            self._reader = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        return self.returncode

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
