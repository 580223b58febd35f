"""`xgate status --watch` against a live control plane: a change shows up in the stream without asking again,
an outage of the control plane is shown and watched through, and `-o json` is the same report as `--json`."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.integration.conftest import ConfigMaker

from xgate.sources.revision import revision_of
from xgate.testing import free_port, run_cli, run_gateway

pytestmark = pytest.mark.integration


async def _next_line(process: asyncio.subprocess.Process, timeout: float = 10.0) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout)
    assert line, "xgate status --watch ended early"
    return json.loads(line)  # type: ignore[no-any-return]


async def test_watch_streams_each_report_and_follows_a_change(make_config: ConfigMaker, work_dir: Path) -> None:
    good = make_config(free_port())
    async with run_gateway(good, work_dir) as gateway:
        url = f"http://127.0.0.1:{gateway.status_port}"
        code, once, _ = await run_cli("status", "--url", url, "-o", "json")
        assert code == 0 and json.loads(once)["all_in_sync"] is True
        code, text, _ = await run_cli("status", "--url", url, "--watch", "--count", "2", "--interval", "0.1")
        assert code == 0 and text.count("test-envoy-0 (") == 2 and text.count("(every 0.1 s, Ctrl-C to stop)") == 2

        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "xgate", "status", "--url", url, "-w", "-o", "json", "--interval", "0.1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            first = await _next_line(process)
            assert first["ok"] is True and first["report"]["revision"] == revision_of(good)
            changed = good.replace("body: ok", "body: changed")
            await gateway.apply(changed)
            for _ in range(100):
                line = await _next_line(process)
                if line["report"]["revision"] == revision_of(changed) and line["ok"]:
                    break
            else:
                pytest.fail("the watch never showed the new revision in sync")

            await gateway.stop_controlplane()
            for _ in range(100):
                line = await _next_line(process)
                if line["report"] is None:
                    break
            assert line["ok"] is False and "cannot reach the control plane" in line["error"]
            await gateway.start_controlplane()  # the same ports: the watch sees it back
            for _ in range(200):
                line = await _next_line(process)
                if line["ok"]:
                    break
            assert line["report"]["revision"] == revision_of(changed)
            process.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(process.wait(), 10) == 0  # the last report's code
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
