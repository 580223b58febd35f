"""The README's first experience: `xgate up` serves the bundled example, or a copy of it; Ctrl-C leaves no process
and no temporary file behind; a second `xgate up` names the port it finds taken."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from xgate.testing import run_cli

pytestmark = pytest.mark.integration


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_serves_the_example_and_stops_cleanly(tmp_path: Path) -> None:
    log = (tmp_path / "up.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "xgate", "up"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get("http://127.0.0.1:10000/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.1)
        response = httpx.get("http://127.0.0.1:10000/hello")
        assert response.status_code == 200
        assert response.json()["upstream"] == "demo-v1"
        status = subprocess.run([sys.executable, "-m", "xgate", "status"], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "in sync" in status.stdout
        children = _descendants(process.pid)
        assert len(children) >= 4  # two demo upstreams, the control plane, Envoy
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if _alive(pid)], "processes left behind"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert "[controlplane]" in output and "[envoy]" in output


def _wait_served(process: subprocess.Popen[bytes], log: Path, url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


async def test_up_on_a_copy_of_the_example_serves_it_and_a_second_up_names_the_taken_port(tmp_path: Path) -> None:
    example = await run_cli("example")
    assert example.code == 0 and "demo-v1" in example.out
    config = tmp_path / "gateway.yaml"
    config.write_text(example.out)  # what a new user does: a copy of the example, to edit
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    log_path = tmp_path / "up.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "xgate", "up", "-f", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "TMPDIR": str(temporary)},
    )
    try:
        _wait_served(process, log_path, "http://127.0.0.1:10000/healthz")
        # The demo upstreams the copy points at were started: before, this was a 503.
        response = httpx.get("http://127.0.0.1:10000/hello")
        assert (response.status_code, response.json()["upstream"]) == (200, "demo-v1"), response.text
        assert httpx.get("http://127.0.0.1:10000/hello", headers={"x-version": "v2"}).json()["upstream"] == "demo-v2"
        children = _descendants(process.pid)

        second = await run_cli("up", timeout=60)
        assert second.code == 2, second
        assert second.out == "", second.out  # nothing was started
        lines = second.err.strip().splitlines()
        assert len(lines) == 1, second.err
        controlplane = next(pid for pid in children if b"controlplane" in Path(f"/proc/{pid}/cmdline").read_bytes())
        assert lines[0].startswith(
            f"xgate up: 127.0.0.1:18000 (control plane xDS, --xds) is in use by pid {controlplane} "
            "(xgate controlplane -f "
        ), lines[0]
        assert f"run by `xgate up` (pid {process.pid})" in lines[0], lines[0]
        assert lines[0].endswith("more of the ports xgate up needs are taken too"), lines[0]

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if _alive(pid)], "processes left behind"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    output = log_path.read_text()
    assert "[xgate] starting demo-v1 on 127.0.0.1:18081, demo-v2 on 127.0.0.1:18082" in output, output
    assert output.rstrip().endswith("[xgate] all stopped: no process of ours is left running"), output[-2000:]
    assert list(temporary.iterdir()) == []  # Envoy's bootstrap left no directory behind
