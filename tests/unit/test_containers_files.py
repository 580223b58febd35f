"""The files that run xgate as containers say what the rest of the project does: the compose Envoy's bootstrap
is `xgate bootstrap`'s, the seeded config is valid and names the compose services, docker-compose.yml publishes
on 127.0.0.1 only, gives every service a health check and a restart policy and holds no secret; and the
fixture's config completion and backend choice."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from xgate.proxy.bootstrap import build_bootstrap
from xgate.pytest_plugin import backend_of
from xgate.testing.stack import LISTENER_NAME, ConfigRejected, complete_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def test_the_compose_envoy_bootstrap_is_the_one_xgate_bootstrap_prints() -> None:
    committed = yaml.safe_load((ROOT / "containers" / "compose" / "envoy.yaml").read_text())
    expected = build_bootstrap(
        node_id="compose-envoy", node_cluster="xgate", xds_servers=[("controlplane", 18000)], admin_port=9901
    )
    assert committed == expected
    assert "./containers/compose/envoy.yaml:/etc/envoy/envoy.yaml:ro" in SERVICES["envoy"]["volumes"]


def test_the_seeded_config_is_valid_and_names_compose_services() -> None:
    path = ROOT / "containers" / "compose" / "gateway.yaml"
    checked = subprocess.run([sys.executable, "-m", "xgate", "validate", "-f", str(path)], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(path.read_text())
    for upstream in config["upstreams"]:
        for endpoint in upstream["endpoints"]:
            host, port = endpoint.split(":")
            assert f"--port {port}" in " ".join(SERVICES[host]["command"])
    served_by = {"policy": "authz", "dyeing": "dyeing", "rate_limit": "ratelimit"}
    for plugin, service in served_by.items():
        host, port = config["plugins"][plugin]["service"].split(":")
        assert host == service
        assert f"--listen 0.0.0.0:{port}" in " ".join(SERVICES[service]["command"])


def test_compose_publishes_on_loopback_only_the_three_documented_ports() -> None:
    published = {}
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            address, _, container_port = mapping.rpartition(":")
            assert address.startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond loopback"
            published[name] = int(container_port)
    assert published == {"etcd": 2379, "controlplane": 18080, "envoy": 10000}


def test_every_compose_service_has_a_restart_policy_and_the_long_running_ones_a_health_check() -> None:
    for name, service in SERVICES.items():
        assert service["restart"] in ("unless-stopped", "on-failure"), name
        if name == "seed":
            assert service["restart"] == "on-failure"  # a one-shot job, retried until etcd answers
            continue
        assert service["healthcheck"]["test"][0] == "CMD", name


def test_compose_holds_no_secret() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"(?i)(password|passwd|secret|token|api[_-]?key)\s*[:=]", text)
    for name, service in SERVICES.items():
        assert not {key.lower() for key in service.get("environment", {})} & {"xgate_etcd_password"}, name


def test_complete_config_adds_the_gateway_listener_only_when_there_is_none() -> None:
    added = yaml.safe_load(complete_config("routes: []", "0.0.0.0", 10000))
    assert added == {"routes": [], "xgate": "v1", "listeners": [{"name": LISTENER_NAME, "address": "0.0.0.0",
                                                                  "port": 10000}]}  # fmt: skip
    own = {"listeners": [{"name": "mine", "port": 8080}]}
    assert yaml.safe_load(complete_config(own, "127.0.0.1", 20000))["listeners"] == own["listeners"]
    assert yaml.safe_load(complete_config("", "127.0.0.1", 1))["listeners"][0]["port"] == 1


@pytest.mark.parametrize("bad", ["routes: [", "- a list", "just text"])
def test_complete_config_refuses_what_is_not_a_config_document(bad: str) -> None:
    with pytest.raises(ConfigRejected):
        complete_config(bad, "127.0.0.1", 1)


class _Config:
    def __init__(self, option: str | None) -> None:
        self.option = option

    def getoption(self, name: str) -> str | None:
        assert name == "--xgate-gateway"
        return self.option


def test_the_fixture_backend_is_the_option_else_the_environment_else_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XGATE_GATEWAY", raising=False)
    assert backend_of(_Config(None)) == "local"  # type: ignore[arg-type]
    monkeypatch.setenv("XGATE_GATEWAY", "containers")
    assert backend_of(_Config(None)) == "containers"  # type: ignore[arg-type]
    assert backend_of(_Config("local")) == "local"  # type: ignore[arg-type]
    monkeypatch.setenv("XGATE_GATEWAY", "docker")
    with pytest.raises(pytest.UsageError, match="XGATE_GATEWAY='docker'"):
        backend_of(_Config(None))  # type: ignore[arg-type]
