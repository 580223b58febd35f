"""The xgate command line as a child process, for tests that check what a user or a script sees."""

from __future__ import annotations

import asyncio
import sys
from typing import NamedTuple


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


async def run_cli(*args: str, timeout: float = 30.0) -> CliResult:
    """`xgate ARGS...` run by this Python interpreter; its exit code, stdout and stderr. Errors: TimeoutError
    when it has not ended after `timeout` seconds (it is killed)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xgate", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CliResult(process.returncode, out.decode(), err.decode())
