"""A real redis-server on a loopback port for integration tests (Debian's redis-server or any on PATH).

Readiness is checked with a raw PING, so the helper does not depend on the Redis client under test. The
server is a child we wait on, dies with us, and is stopped by its own PID; nothing is persisted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from xgate.errors import ProxyError
from xgate.supervisor import OwnedProcess, find_program, log_tail
from xgate.testing.ports import free_ports

_POLL_INTERVAL = 0.02
_PORT_CLASH = "Address already in use"


def find_redis_server() -> str:
    """Path of `redis-server` on PATH. Errors: ProxyError when there is none."""
    return find_program("redis-server", "redis-server")


class RedisProcess(OwnedProcess):
    """One redis-server on 127.0.0.1:`port`, no persistence, log in `<work_dir>/redis-<port>.log`.

    `kill()` and `start()` again on the same port simulate an outage and a restart (with empty memory).
    Errors: ProxyError when redis-server is missing, exits during startup or does not answer PING.
    Resources: a child process in its own session (SIGTERMed if we die), the log file.
    """

    def __init__(self, work_dir: Path | str, *, port: int | None = None, redis_path: str | None = None) -> None:
        self._work_dir = Path(work_dir)
        self.port = port or free_ports(1)[0]
        self._redis_path = redis_path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self._work_dir / f"redis-{self.port}.log"

    def argv(self) -> list[str]:
        return [
            self._redis_path or find_redis_server(),
            *("--port", str(self.port)),
            *("--bind", "127.0.0.1"),
            *("--save", ""),
            *("--appendonly", "no"),
            *("--dir", str(self._work_dir)),
            *("--logfile", str(self.log_path)),
            *("--daemonize", "no"),
        ]

    async def start(self, timeout: float = 5.0) -> None:
        """Start redis-server and wait until it answers PING."""
        if self.running:
            raise ProxyError(f"redis-server on port {self.port} is already running")
        self._work_dir.mkdir(parents=True, exist_ok=True)
        await self._spawn(self.argv(), asyncio.subprocess.DEVNULL)  # it writes its own --logfile
        await self._wait_ready(timeout)

    async def _wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self.ping():
            if not self.running:
                raise ProxyError(f"redis-server exited with code {self.returncode}{self.log_tail()}")
            if loop.time() >= deadline:
                raise ProxyError(f"redis-server on port {self.port} did not answer PING within {timeout} s")
            await asyncio.sleep(_POLL_INTERVAL)

    async def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers PING with PONG."""
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(b"PING\r\n")
                    return (await reader.readline()) == b"+PONG\r\n"
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        return False

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)


@contextlib.asynccontextmanager
async def run_redis(
    work_dir: Path | str, *, timeout: float = 5.0, redis_path: str | None = None
) -> AsyncIterator[RedisProcess]:
    """Start redis-server on a free loopback port under `work_dir`, yield it once it answers, stop it.

    Retries on a new port (up to 3 times) if another process took the port between picking and binding.
    Errors: ProxyError when redis-server is missing or does not start within `timeout` s.
    """
    for attempt in range(3):
        server = RedisProcess(work_dir, redis_path=redis_path)
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
