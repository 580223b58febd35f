"""A real nginx (Debian's nginx-light) as an upstream on a loopback port, for health-check and failover tests.

nginx is the realistic upstream: like production servers it answers 400 to a malformed Host header, where a
permissive test server would accept anything. Each server runs in the foreground (`daemon off`, one process:
`master_process off`) from its own temporary prefix, and is stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from xgate.errors import ProxyError
from xgate.supervisor import OwnedProcess, find_program, log_tail
from xgate.testing.ports import free_ports

_POLL_INTERVAL = 0.02
_PORT_CLASH = "Address already in use"
_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
{temp_paths}
    server {{
        listen 127.0.0.1:{port};
        default_type text/plain;
        location = /healthz {{ return 200 "ok\\n"; }}
        location / {{
            add_header x-upstream {name} always;
            if (-f {prefix}/failing) {{ return 503 "{name} failing\\n"; }}
            return 200 "{name}\\n";
        }}
    }}
}}
"""


def find_nginx() -> str:
    """Path of `nginx` on PATH (or in /usr/sbin). Errors: ProxyError when there is none."""
    with contextlib.suppress(ProxyError):
        return find_program("nginx", "nginx-light")
    if Path("/usr/sbin/nginx").exists():
        return "/usr/sbin/nginx"
    raise ProxyError("nginx not found: install Debian's nginx-light (apt-get install nginx-light)")


class NginxProcess(OwnedProcess):
    """One nginx on 127.0.0.1:`port` answering `name` (body and `x-upstream` header) on every path, and 200 on
    /healthz; its config, temp dirs and error log under `<work_dir>/nginx-<name>/`.

    `stop()` and `start()` again on the same port simulate an upstream that dies and comes back; `fail()` makes
    it answer 503 on every path but /healthz (a health endpoint that lies) until `recover()`; `freeze()` stops
    the process (SIGSTOP: connections still open in the kernel's backlog, nothing answers) until `thaw()`.
    Errors: ProxyError when nginx is missing, exits during startup or does not accept connections.
    Resources: a child process in its own session (SIGTERMed if we die), the prefix directory.
    """

    def __init__(self, work_dir: Path | str, name: str, *, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_ports(1)[0]
        self.prefix = Path(work_dir) / f"nginx-{name}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.prefix / "error.log"

    def write_config(self) -> Path:
        temp_paths = "\n".join(f"    {kind}_temp_path {self.prefix}/{kind};" for kind in _TEMP_DIRS)
        config = self.prefix / "nginx.conf"
        config.write_text(_CONFIG.format(prefix=self.prefix, temp_paths=temp_paths, port=self.port, name=self.name))
        return config

    async def start(self, timeout: float = 5.0) -> None:
        """Start nginx and wait until its port accepts connections."""
        if self.running:
            raise ProxyError(f"nginx {self.name} on port {self.port} is already running")
        self.prefix.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        argv = [find_nginx(), "-p", str(self.prefix), "-c", str(config), "-e", str(self.log_path)]
        await self._spawn(argv, asyncio.subprocess.DEVNULL)  # it writes its own error log
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self._accepts():
            if not self.running:
                raise ProxyError(f"nginx {self.name} exited with code {self.returncode}{self.log_tail()}")
            if loop.time() >= deadline:
                raise ProxyError(f"nginx {self.name} on port {self.port} did not listen within {timeout} s")
            await asyncio.sleep(_POLL_INTERVAL)

    async def _accepts(self) -> bool:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        return False

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def fail(self) -> None:
        """Answer 503 from now on (nginx checks the flag file on each request: no reload, no dropped request)."""
        (self.prefix / "failing").touch()

    def recover(self) -> None:
        (self.prefix / "failing").unlink(missing_ok=True)

    def freeze(self) -> None:
        """SIGSTOP the server: it hangs, as a process stuck in a long GC pause or on a dead disk does."""
        if self.pid is not None and self.running:
            os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.pid is not None and self.running:
            os.kill(self.pid, signal.SIGCONT)

    async def stop(self, grace: float = 5.0) -> int | None:
        self.thaw()  # a stopped process would hold SIGTERM until continued
        return await super().stop(grace)


@contextlib.asynccontextmanager
async def run_nginx(work_dir: Path | str, name: str, *, timeout: float = 5.0) -> AsyncIterator[NginxProcess]:
    """Start an nginx answering `name` on a free loopback port under `work_dir`, yield it, stop it.

    Retries on a new port (up to 3 times) if another process took the port between picking and binding.
    Errors: ProxyError when nginx is missing or does not start within `timeout` s.
    """
    for attempt in range(3):
        server = NginxProcess(work_dir, name)
        try:
            await server.start(timeout)
            break
        except ProxyError:
            await server.stop()
            if _PORT_CLASH not in server.log_tail(50) or attempt == 2:
                raise
        except BaseException:
            await server.stop()
            raise
    try:
        yield server
    finally:
        await server.stop()
