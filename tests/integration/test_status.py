"""`xgate status` against a live control plane with two Envoys: in sync, then a rejected change."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from xgate.testing import free_port, run_gateway, write_atomic

pytestmark = pytest.mark.integration


async def _status(port: int) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xgate", "status", "--url", f"http://127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_status_reports_every_envoy_and_a_rejected_change(
    make_config: Callable[..., str], work_dir: Path
) -> None:
    port = free_port()
    good = make_config(port)
    async with run_gateway(good, work_dir, envoys=2) as gateway:
        code, output = await _status(gateway.status_port)
        assert code == 0, output
        assert output.count(": in sync, revision") == 2, output
        assert "test-envoy-0" in output and "test-envoy-1" in output

        write_atomic(gateway.config_path, good.replace("upstream: v2\n", "upstream: missing\n"))
        await gateway.wait_for_rejection("upstream 'missing' does not exist")
        code, output = await _status(gateway.status_port)
        assert code == 1, output
        assert "last change REJECTED" in output
        assert f"{gateway.config_path}:" in output and "route by-header field upstream" in output
        # Both Envoys still hold the last good revision.
        assert output.count(": in sync, revision") == 2, output
