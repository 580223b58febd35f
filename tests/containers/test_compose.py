"""docker-compose.yml as a user runs it (`podman-compose up -d`): the gateway serves through Envoy with every
service in the path, `xgate apply` from the host changes it live, it keeps serving while etcd restarts, and
`down` leaves nothing behind. Host ports are chosen at run time (XGATE_PORT, XGATE_ETCD_PORT,
XGATE_STATUS_PORT), the project name is the test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from xgate.testing.ports import free_ports

pytestmark = pytest.mark.containers
ROOT = Path(__file__).resolve().parents[2]
Podman = Callable[..., subprocess.CompletedProcess[str]]
CHANGE = """
routes:
  - name: greeting
    match: {path: {exact: /greeting}}
    direct_response: {status: 200, body: "%s"}
"""
HEALTH = """
routes:
  - name: health
    match: {path: {exact: /healthz}}
    direct_response: {status: 200, body: changed}
"""


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    url: str
    etcd: str
    status_url: str

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "podman_compose", "-p", self.project, *args], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def xgate(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xgate", *args], capture_output=True, text=True, timeout=60)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def answers(url: str, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == status
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    port, etcd_port, status_port = free_ports(3)
    project = f"xgate-test-{os.getpid()}"
    env = {**os.environ, "CONTAINERS_CONF": str(ROOT / "containers" / "containers.conf"), "XGATE_PORT": str(port),
           "XGATE_ETCD_PORT": str(etcd_port), "XGATE_STATUS_PORT": str(status_port)}  # fmt: skip
    stack = Stack(project, env, f"http://127.0.0.1:{port}", f"127.0.0.1:{etcd_port}", f"http://127.0.0.1:{status_port}")
    started = time.monotonic()
    up = stack.compose("up", "-d")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        wait_for(lambda: answers(stack.url + "/healthz"), 90, "Envoy to serve the seeded config")
        wait_for(lambda: stack.xgate("status", "--url", stack.status_url).returncode == 0, 60, "xgate status: in sync")
        print(f"\ncompose stack up and serving in {time.monotonic() - started:.1f} s")
        yield stack
    finally:
        stack.compose("down", "-v")


def envoy_stats(podman: Podman, stack: Stack, pattern: str) -> dict[str, int]:
    """Envoy's counters matching `pattern`, read from its admin API inside its container (never published)."""
    url = f"http://127.0.0.1:9901/stats?format=json&filter={pattern}"
    ran = podman("exec", stack.container("envoy"), "busybox", "wget", "-q", "-O", "-", url)
    return {stat["name"]: int(stat.get("value", 0)) for stat in json.loads(ran.stdout)["stats"] if "name" in stat}


def service_metrics(podman: Podman, stack: Stack, service: str, port: int) -> dict[str, object]:
    """A service's own figures (GET /metrics as JSON on its status port), read inside its container."""
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    ran = podman("exec", stack.container(service), "python3", "-c", fetch)
    figures: dict[str, object] = json.loads(ran.stdout)
    return figures


def test_every_service_is_healthy_by_its_own_health_check(stack: Stack, podman: Podman) -> None:
    services = ["etcd", "controlplane", "authz", "dyeing", "ratelimit", "redis", "envoy", "demo-v1", "demo-v2"]
    for service in services:
        checked = podman("healthcheck", "run", stack.container(service), check=False)
        assert checked.returncode == 0, f"{service}: {checked.stdout}{checked.stderr}"
    status = stack.xgate("status", "--url", stack.status_url)
    assert status.returncode == 0, status.stdout
    assert "compose-envoy" in status.stdout
    for service in ("authz", "dyeing", "ratelimit"):
        assert f"{service} {service}-" in status.stdout  # each service instance, in sync


def eventually(send: Callable[[], httpx.Response], wanted: Callable[[httpx.Response], bool], why: Callable[[], object],
               timeout: float = 10) -> httpx.Response:  # fmt: skip
    """Send until the answer is `wanted`: a service's first call also opens Envoy's connection to it, which can
    outlast the call's timeout on a busy machine. Fails with the last answer and `why()` (Envoy's counters)."""
    deadline = time.monotonic() + timeout
    while not wanted(answer := send()):
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout} s still {answer.status_code} {answer.text[:300]}; Envoy: {why()}")
        time.sleep(0.2)
    return answer


def test_traffic_goes_through_envoy_and_every_service(stack: Stack, podman: Podman) -> None:
    hello = httpx.get(stack.url + "/hello", timeout=5)
    assert hello.status_code == 200
    assert hello.json()["upstream"] == "demo-v1"
    assert hello.headers["x-served-by"] == "xgate"
    # authz runs the example read_only policy
    denied = eventually(lambda: httpx.post(stack.url + "/admin", timeout=5), lambda answer: answer.status_code == 405,
                        lambda: envoy_stats(podman, stack, "ext_authz"))  # fmt: skip
    assert denied.headers["allow"] == "GET, HEAD"
    assert httpx.get(stack.url + "/admin", timeout=5).status_code == 200
    # dyeing: a sticky rule is in the config, so the ext_proc service dyes every request
    canary = eventually(lambda: httpx.get(stack.url + "/users", headers={"x-canary": "1"}, timeout=5),
                        lambda answer: answer.json()["upstream"] == "demo-v2",
                        lambda: envoy_stats(podman, stack, "ext_proc"))  # fmt: skip
    assert canary.json()["headers"]["x-xgate-stage"] == "canary"
    # ratelimit, counting in Redis: 5 a minute for the route
    statuses = [httpx.get(stack.url + "/limited", timeout=5).status_code for _ in range(9)]
    envoy_let_through = sum(value for name, value in envoy_stats(podman, stack, "ratelimit").items()
                            if name.endswith("ratelimit.failure_mode_allowed"))  # fmt: skip
    figures = service_metrics(podman, stack, "ratelimit", 18083)
    limits = figures["limits"]
    assert isinstance(limits, dict), figures
    # The service's own fail-open: a decision Redis could not give is answered OK (failure_mode open), counted.
    service_let_through = sum(outcomes.get("errors", 0) for outcomes in limits.values())
    let_through = envoy_let_through + service_let_through
    why = f"Envoy let through {envoy_let_through}, the service {service_let_through}; the service: {figures}"
    assert 429 in statuses, f"nothing limited: {statuses}; {why}"
    first = statuses.index(429)
    assert set(statuses[:first]) == {200}
    # Exactly 5 pass, unless the service could not decide some (fail-open, counted above): those pass uncounted.
    assert first == 5 or 5 < first <= 5 + let_through, (statuses, why)


def test_apply_from_the_host_changes_the_gateway_live(stack: Stack) -> None:
    change = Path(stack.env.get("TMPDIR", "/tmp")) / f"{stack.project}-change.yaml"
    change.write_text(CHANGE % "first")
    try:
        applied = stack.xgate("apply", "-f", str(change), "--etcd", stack.etcd)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        wait_for(lambda: httpx.get(stack.url + "/greeting", timeout=5).text == "first", 10, "the new route")
        assert stack.xgate("status", "--url", stack.status_url).returncode == 0
    finally:
        change.unlink()


def test_the_gateway_serves_while_etcd_restarts(stack: Stack, podman: Podman) -> None:
    answered: list[int | str] = []
    stop = threading.Event()

    def traffic() -> None:  # bounded: at most 2,000 requests or 120 s
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=5) as client:
            while not stop.is_set() and len(answered) < 2000 and time.monotonic() < deadline:
                try:
                    answered.append(client.get(stack.url + "/hello").status_code)
                except httpx.HTTPError as exc:
                    answered.append(repr(exc))
                time.sleep(0.02)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        wait_for(lambda: len(answered) >= 10, 20, "traffic to flow")
        podman("restart", stack.container("etcd"))
        # The control plane notices the outage and reconnects to the new etcd container.
        wait_for(lambda: stack.xgate("status", "--url", stack.status_url).returncode == 0, 90, "etcd to be back")
        change = Path(stack.env.get("TMPDIR", "/tmp")) / f"{stack.project}-after.yaml"
        change.write_text(CHANGE % "after the restart")
        try:
            applied = stack.xgate("apply", "-f", str(change), "--etcd", stack.etcd)
        finally:
            change.unlink()
        assert applied.returncode == 0, applied.stdout + applied.stderr
        wait_for(lambda: httpx.get(stack.url + "/greeting", timeout=5).text == "after the restart", 20, "the change")
    finally:
        stop.set()
        sender.join()
    assert len(answered) >= 10
    assert set(answered) == {200}, [item for item in answered if item != 200][:5]


def test_seeding_again_keeps_a_config_changed_since(stack: Stack) -> None:
    """The seed step runs at every `up`; it writes the example only into an empty etcd."""
    change = Path(stack.env.get("TMPDIR", "/tmp")) / f"{stack.project}-health.yaml"
    change.write_text(HEALTH)
    try:
        applied = stack.xgate("apply", "-f", str(change), "--etcd", stack.etcd)
    finally:
        change.unlink()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    wait_for(lambda: httpx.get(stack.url + "/healthz", timeout=5).text == "changed", 20, "the changed route")
    seeded = stack.compose("run", "--rm", "seed")
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    assert "already holds a config" in seeded.stdout
    assert httpx.get(stack.url + "/healthz", timeout=5).text == "changed"


def test_down_leaves_nothing_behind(stack: Stack, podman: Podman) -> None:
    down = stack.compose("down", "-v")
    assert down.returncode == 0, down.stdout + down.stderr
    project = stack.project
    containers = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    networks = podman("network", "ls", "--format", "{{.Name}}").stdout.split()
    volumes = podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
    pods = podman("pod", "ls", "--format", "{{.Name}}").stdout.split()
    left = [name for name in containers + networks + volumes + pods if project in name]
    assert left == []
    assert not answers(stack.url + "/healthz")
