"""`xgate config-dump` against real Envoys: what it shows was sent is what each Envoy reports holding."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.conftest import ConfigMaker

from xgate.proxy.process import EnvoyProcess
from xgate.testing import free_port, run_cli, run_gateway
from xgate.testing.tls import TestCA

pytestmark = pytest.mark.integration


async def _envoy_dump(envoy: EnvoyProcess) -> dict[str, Any]:
    status, body = await envoy.admin_get("/config_dump?include_eds")
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def _envoy_section(dump: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """Envoy's dynamic resources of one kind, by name, as it holds them (without the Any's @type)."""
    found: dict[str, dict[str, Any]] = {}
    for config in dump["configs"]:
        if kind == "routes":
            entries = [entry["route_config"] for entry in config.get("dynamic_route_configs", [])]
        elif kind == "clusters":
            entries = [entry["cluster"] for entry in config.get("dynamic_active_clusters", [])]
        elif kind == "listeners":
            entries = [entry["active_state"]["listener"] for entry in config.get("dynamic_listeners", [])]
        else:
            entries = [entry["endpoint_config"] for entry in config.get("dynamic_endpoint_configs", [])]
        for entry in entries:
            name = entry.get("name") or entry.get("cluster_name")
            found[name] = {key: value for key, value in entry.items() if key != "@type"}
    return found


def _ours(dump: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        entry.get("name") or entry["cluster_name"]: {key: value for key, value in entry.items() if key != "@type"}
        for entry in dump["resources"][kind]
    }


async def test_the_dump_of_each_envoy_equals_what_that_envoy_holds(make_config: ConfigMaker, work_dir: Path) -> None:
    async with run_gateway(make_config(free_port()), work_dir, envoys=2) as gateway:
        url = f"http://127.0.0.1:{gateway.status_port}"
        for index, envoy in enumerate(gateway.envoys):
            code, out, err = await run_cli("config-dump", "--url", url, "--node", f"test-envoy-{index}")
            assert code == 0, err
            dump = yaml.safe_load(out)
            assert dump["node"] == f"test-envoy-{index}" and dump["kind"] == "envoy"
            assert all(section["acked"] for section in dump["versions"].values()), dump["versions"]
            held = await _envoy_dump(envoy)
            routes = _ours(dump, "routes")
            assert list(routes) == ["routes/public"]
            names = [route["name"] for host in routes["routes/public"]["virtual_hosts"] for route in host["routes"]]
            assert {"health", "by-header", "cors", "moved", "split"} <= set(names)
            assert routes == _envoy_section(held, "routes")
            assert _ours(dump, "clusters") == _envoy_section(held, "clusters")
            assert _ours(dump, "listeners") == _envoy_section(held, "listeners")

        # A change shows in the dump as soon as the Envoy has it.
        assert gateway.config_path is not None
        await gateway.apply(gateway.config_path.read_text().replace("body: ok", "body: changed"))
        code, out, err = await run_cli("config-dump", "--url", url, "--node", "test-envoy-1", "--json")
        assert code == 0, err
        dump = json.loads(out)
        assert _ours(dump, "routes") == _envoy_section(await _envoy_dump(gateway.envoys[1]), "routes")
        assert "changed" in json.dumps(dump["resources"]["routes"])


async def test_a_missing_or_ambiguous_node_is_a_clear_error(make_config: ConfigMaker, work_dir: Path) -> None:
    async with run_gateway(make_config(free_port()), work_dir, envoys=2) as gateway:
        url = f"http://127.0.0.1:{gateway.status_port}"
        code, out, err = await run_cli("config-dump", "--url", url)
        assert (code, out) == (2, "")
        assert err.strip() == (
            "xgate config-dump: 2 Envoys are connected; name one with --node: test-envoy-0, test-envoy-1"
        )
        code, _, err = await run_cli("config-dump", "--url", url, "--node", "nope")
        assert code == 2 and "no consumer with node id 'nope' is connected" in err
    code, _, err = await run_cli("config-dump", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "cannot reach the control plane" in err


async def test_a_tls_listener_s_secret_is_dumped_without_its_private_key(work_dir: Path) -> None:
    issued = TestCA().issue("a.example.test")
    issued.write(work_dir, "a")
    config = f"""
secrets:
  - {{name: a, cert_file: a.pem, key_file: a-key.pem}}
listeners:
  - {{name: edge, address: 127.0.0.1, port: {free_port()}, tls: {{certificates: [{{secret: a}}]}}}}
routes:
  - {{name: ok, direct_response: {{status: 200, body: ok}}}}
"""
    async with run_gateway(config, work_dir) as gateway:
        code, out, err = await run_cli("config-dump", "--url", f"http://127.0.0.1:{gateway.status_port}")
        assert code == 0, err
    key_lines = [line for line in issued.key.splitlines() if line and "-----" not in line]
    assert key_lines and not any(line in out for line in key_lines)
    # SDS sends the PEM as bytes, which JSON shows in base64: neither form may appear.
    assert "PRIVATE KEY" not in out and base64.b64encode(issued.key.encode()).decode()[:40] not in out
    dump = yaml.safe_load(out)
    [secret] = dump["resources"]["secrets"]
    assert dump["versions"]["secrets"]["acked"] is True
    assert "[redacted]" in json.dumps(secret["tls_certificate"]["private_key"])
    chain = secret["tls_certificate"]["certificate_chain"]["inline_bytes"]  # not a secret: shown
    assert base64.b64decode(chain).decode() == issued.cert
