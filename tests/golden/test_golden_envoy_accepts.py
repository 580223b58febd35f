"""Every golden translation is a config Envoy itself accepts: `envoy --mode validate` on a static bootstrap
holding the same resources (each listener's RDS routes and ECDS filter configs inlined, each EDS cluster's
endpoints inlined, SDS secrets as static secrets).

Validation in xgate should refuse whatever Envoy would refuse (an Envoy that NACKs the first route config of
a listener serves 404s); this is where a translation that Envoy's own checks reject shows up first.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from tests.golden.test_golden_translate import etcd_compiled

from xgate.config.load import load_file
from xgate.pipeline import compile_config
from xgate.proxy.bootstrap import find_envoy

CASES = Path(__file__).parent / "translate"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _data(message: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))
    return data


def static_bootstrap(case: Path) -> dict[str, Any]:
    if (case / "etcd.yaml").exists():
        resources = asyncio.run(etcd_compiled(case / "etcd.yaml"))[0].resources
    else:
        resources = compile_config(load_file(case / "in.yaml")).resources
    routes = {name: _data(message) for name, message in resources.routes.items()}
    listeners = []
    for message in resources.listeners.values():
        listener = _data(message)
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                config = network_filter["typed_config"]
                if config["@type"] == HCM:  # the filter configs it takes over ECDS, inlined
                    config["http_filters"] = [_inlined(f, resources.filter_configs) for f in config["http_filters"]]
                if config["@type"] == HCM and "rds" in config:
                    config["route_config"] = routes[config.pop("rds")["route_config_name"]]
                if config["@type"] == HCM and "scoped_routes" in config:  # its scopes and tables inlined
                    scoped = config["scoped_routes"]
                    del scoped["scoped_rds"]
                    scopes = [_data(scope) for scope in resources.scoped_routes.values()]
                    for scope in scopes:
                        scope["route_configuration"] = routes[scope.pop("route_configuration_name")]
                    scoped["scoped_route_configurations_list"] = {"scoped_route_configurations": scopes}
        listeners.append(listener)
    clusters = []
    for name, message in resources.clusters.items():
        cluster = _data(message)
        if cluster.get("type") == "EDS":
            cluster.pop("eds_cluster_config")
            cluster["type"] = "STATIC"
            cluster["load_assignment"] = _data(resources.endpoints[name])
        clusters.append(cluster)
    secrets = [_data(message) for message in resources.secrets.values()]
    static = {"listeners": _static_secrets(listeners), "clusters": _static_secrets(clusters), "secrets": secrets}
    return {"static_resources": static}


def _inlined(http_filter: dict[str, Any], filter_configs: dict[str, Any]) -> dict[str, Any]:
    if "config_discovery" not in http_filter:
        return http_filter
    found = _data(filter_configs[http_filter["name"]])
    return {"name": http_filter["name"], "typed_config": found["typed_config"]}


def _static_secrets(data: Any) -> Any:
    """`data` with each SDS secret reference naming a static secret (no sds_config: no ADS in this bootstrap)."""
    if isinstance(data, list):
        return [_static_secrets(item) for item in data]
    if isinstance(data, dict):
        return {key: _static_secrets(value) for key, value in data.items() if key != "sds_config"}
    return data


@pytest.mark.parametrize(
    "case",
    sorted(p for p in CASES.iterdir() if p.is_dir() and not (p / "out.errors.txt").exists()),
    ids=lambda p: p.name,
)
def test_envoy_accepts_the_translation(case: Path, tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(static_bootstrap(case)))
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
