"""The gateway of the `xgate_gateway` fixture keeps one contract on both backends, local processes and
containers: `apply` returns once Envoy and every service serve the config (authz, dyeing and ratelimit all in
a request's path), a refused config raises and changes nothing, each apply replaces the whole config, and the
pytest plugin runs a user's tests (examples/service-test) with the containers backend when asked to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import pytest

from xgate.testing.containers import GatewayStack, Images
from xgate.testing.stack import ConfigRejected, GatewayUnderTest, start_gateway

ROOT = Path(__file__).resolve().parents[2]
POLICIES = Path(__file__).parent / "policies"


class Echo:
    """An upstream on `host` (in a thread of this process) answering each request with its path and headers."""

    def __init__(self, host: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                payload = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
                self.send_response(200)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.address = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("local", marks=pytest.mark.integration),
        pytest.param("containers", marks=pytest.mark.containers),
    ],
)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayUnderTest]:
    if request.param == "containers":
        request.getfixturevalue("container_engine")
    with start_gateway(request.param, tmp_path_factory.mktemp("gateway"), [POLICIES]) as started:
        yield started


@pytest.fixture(scope="module")
def echo(gateway: GatewayUnderTest) -> Iterator[Echo]:
    upstream = Echo(gateway.upstream_host)
    yield upstream
    upstream.stop()


def config(gateway: GatewayUnderTest, echo: Echo, *routes: dict[str, Any]) -> dict[str, Any]:
    # The dyeing service's container decides (mode ext_proc): every request with x-user goes through it.
    sticky = {"stage": "beta", "sticky": {"percent": 100, "key": {"header": "x-user"}}}
    policies = {"gate": "fixture_policies:needs_pass"}
    return {
        "plugins": {
            "policy": {"service": gateway.services["authz"], "timeout": "1s", "policies": policies},
            "dyeing": {"service": gateway.services["dyeing"], "timeout": "1s", "mode": "ext_proc", "rules": [sticky]},
            "rate_limit": {"service": gateway.services["ratelimit"], "timeout": "250ms"},
        },
        "upstreams": [{"name": "echo", "endpoints": [echo.address]}],
        "routes": [*routes, {"name": "default", "upstream": "echo"}],
    }


GUARDED = {"name": "guarded", "match": {"path": {"prefix": "/guarded"}}, "upstream": "echo",
           "plugins": {"policy": {"name": "gate"}}}  # fmt: skip
LIMITED = {"name": "limited", "match": {"path": {"prefix": "/limited"}}, "upstream": "echo",
           "plugins": {"rate_limit": {"global": {"requests": 3, "per": "1m"}}}}  # fmt: skip


def envoy_counters(gateway: GatewayUnderTest, part: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{gateway.admin_url}/stats?format=json&filter={part}", timeout=5) as response:
        stats = json.load(response)["stats"]
    return {stat["name"]: int(stat["value"]) for stat in stats if "name" in stat and "value" in stat}


def test_apply_returns_once_envoy_and_every_service_serve_it(gateway: GatewayUnderTest, echo: Echo) -> None:
    revision = gateway.apply(config(gateway, echo, GUARDED, LIMITED))
    assert revision
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        plain = client.get("/anything")
        assert plain.status_code == 200
        assert plain.json()["path"] == "/anything"
        refused = client.get("/guarded")
        assert (refused.status_code, refused.text) == (403, "no pass")  # authz ran the policy
        passed = client.get("/guarded", headers={"x-pass": "yes"})
        assert passed.json()["headers"]["x-passed"] == "yes"
        dyed = client.get("/", headers={"x-user": "ana"})
        if dyed.json()["headers"].get("x-xgate-stage") != "beta":
            pytest.fail(f"not dyed by the service: {dyed.json()}; Envoy: {envoy_counters(gateway, 'ext_proc')}")
        statuses = [client.get("/limited").status_code for _ in range(6)]
    let_through = sum(value for name, value in envoy_counters(gateway, "ratelimit").items()
                      if name.endswith("ratelimit.failure_mode_allowed"))  # fmt: skip
    assert 429 in statuses, f"nothing limited: {statuses}; let through for a late service: {let_through}"
    first = statuses.index(429)
    assert set(statuses[:first]) == {200}
    # Exactly 3 pass, unless the service was late for some (failure_mode: open): those pass uncounted.
    assert first == 3 or 3 < first <= 3 + let_through, (statuses, let_through)
    status = subprocess.run([sys.executable, "-m", "xgate", "status", "--url", gateway.status_url],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert status.returncode == 0, status.stdout
    assert sum(line.startswith(("authz ", "dyeing ", "ratelimit ")) for line in status.stdout.splitlines()) == 3


def test_a_refused_config_raises_and_changes_nothing(gateway: GatewayUnderTest, echo: Echo) -> None:
    gateway.apply(config(gateway, echo, GUARDED))
    with pytest.raises(ConfigRejected, match="upstream 'nowhere' does not exist"):
        gateway.apply(config(gateway, echo, {"name": "broken", "upstream": "nowhere"}))
    with pytest.raises(ConfigRejected, match="not valid YAML"):
        gateway.apply("routes: [")
    assert httpx.get(gateway.url + "/guarded", timeout=10).status_code == 403


def test_each_apply_replaces_the_whole_config(gateway: GatewayUnderTest, echo: Echo) -> None:
    first = {"name": "first", "match": {"path": {"exact": "/first"}}, "direct_response": {"status": 200, "body": "1"}}
    gateway.apply(config(gateway, echo, first))
    assert httpx.get(gateway.url + "/first", timeout=10).text == "1"
    gateway.apply({"routes": [{"name": "only", "direct_response": {"status": 200, "body": "only"}}]})
    assert httpx.get(gateway.url + "/first", timeout=10).text == "only"  # `first` and the upstream are gone


@pytest.mark.containers
def test_the_plugin_runs_a_users_tests_with_containers(container_engine: str) -> None:
    """examples/service-test through the pytest11 plugin, as its README says to run it (the suite also runs it
    with the default, local processes)."""
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "examples/service-test", "-p", "no:cacheprovider", "-q"],
        cwd=ROOT, env={**os.environ, "XGATE_GATEWAY": "containers"}, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "6 passed" in ran.stdout


@pytest.mark.containers
def test_a_stack_that_cannot_start_says_why_and_leaves_nothing(container_engine: str, podman: Any) -> None:
    def present() -> set[str]:
        listed = [podman("ps", "--all", "--format", "{{.Names}}"), podman("network", "ls", "--format", "{{.Name}}")]
        return {name for ran in listed for name in ran.stdout.split()}

    before = present()
    missing = "localhost/xgate-no-such-image:none"
    with pytest.raises(docker.errors.DockerException, match="xgate-no-such-image"):
        GatewayStack(images=Images(xgate=missing), start_timeout=30).start()
    assert present() == before  # etcd and Envoy, which did start, are gone with the network
