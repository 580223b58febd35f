"""Container tests: podman (or Docker) through its Docker-compatible API, with the images of scripts/images.sh.

scripts/test.sh builds the images and starts podman's API service before the suite; when these tests are run
by hand, the images are brought up to date here, once, after collection (outside any test's timeout), and a
missing API service fails the tests with what to do: they never skip.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_finish(session: pytest.Session) -> None:
    if not any(item.get_closest_marker("containers") for item in session.items):
        return
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "containers" / "containers.conf"))
    built = subprocess.run([str(ROOT / "scripts" / "images.sh")], capture_output=True, text=True)
    if built.returncode != 0:
        raise pytest.UsageError(f"scripts/images.sh failed ({built.returncode}):\n{built.stdout}{built.stderr}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in built.stdout.splitlines():
        if reporter is not None:
            reporter.write_line(line)


def podman_env() -> dict[str, str]:
    """The environment of the podman command line: the project's configuration (as scripts/ use it)."""
    return {"CONTAINERS_CONF": str(ROOT / "containers" / "containers.conf"), **os.environ}


def run_podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, env=podman_env(), timeout=120)


@pytest.fixture(scope="session")
def podman() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`podman(*args, check=True)`: the podman command line (the project's configuration), output as text."""
    return run_podman


@pytest.fixture(scope="session")
def container_engine() -> Iterator[str]:
    """DOCKER_HOST of the API service testcontainers talks to (scripts/test.sh starts podman's)."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        pytest.fail(
            "DOCKER_HOST is not set: run the suite with scripts/test.sh, or start "
            "`podman system service --time=0 unix:///tmp/podman.sock` and export DOCKER_HOST=unix:///tmp/podman.sock "
            "TESTCONTAINERS_RYUK_DISABLED=true TESTCONTAINERS_CONNECTION_MODE=docker_host"
        )
    yield host
