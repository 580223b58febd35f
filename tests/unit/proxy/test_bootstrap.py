"""The Envoy bootstrap points at the ADS control planes and passes Envoy's own validation."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2 as bootstrap_v3
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 (registers the Any type)
from google.protobuf import json_format
from typer.testing import CliRunner

from xgate.cli.main import app
from xgate.proxy.bootstrap import XDS_CLUSTER_NAME, build_bootstrap, find_envoy

SERVERS = [("127.0.0.1", 18000), ("127.0.0.2", 18001)]


def _build(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"node_id": "gw-1", "node_cluster": "edge", "xds_servers": SERVERS}
    return build_bootstrap(**(args | overrides))


def test_delta_is_the_default_and_sotw_a_flag() -> None:
    assert _build()["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    for args, api_type in (([], "DELTA_GRPC"), (["--sotw"], "GRPC")):
        result = CliRunner().invoke(app, ["bootstrap", *args])
        assert result.exit_code == 0, result.output
        assert yaml.safe_load(result.output)["dynamic_resources"]["ads_config"]["api_type"] == api_type


def test_node_and_admin() -> None:
    bootstrap = _build(admin_port=0)
    assert bootstrap["node"] == {"id": "gw-1", "cluster": "edge", "metadata": {"xgate": {}}}
    assert bootstrap["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 0}


def test_the_node_says_where_its_counters_are_and_the_stats_listener_forwards_two_paths() -> None:
    bootstrap = _build(admin_port=9901, stats=("0.0.0.0", 9902))
    assert bootstrap["node"]["metadata"] == {"xgate": {"admin": "127.0.0.1:9901", "stats": "0.0.0.0:9902"}}
    (listener,) = bootstrap["static_resources"]["listeners"]
    routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    forwarded = [(r["match"].get("path"), r.get("route", {}).get("cluster")) for r in routes if "route" in r]
    assert forwarded == [("/stats/prometheus", "xgate-admin"), ("/stats", "xgate-admin")]
    assert routes[-1] == {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
    with pytest.raises(ValueError, match="a stats listener needs a known admin port"):
        _build(admin_port=0, stats=("0.0.0.0", 9902))


@pytest.mark.parametrize(("delta", "api_type"), [(True, "DELTA_GRPC"), (False, "GRPC")])
def test_ads_config(delta: bool, api_type: str) -> None:
    dynamic = _build(delta=delta)["dynamic_resources"]
    ads = dynamic["ads_config"]
    assert ads["api_type"] == api_type
    assert ads["transport_api_version"] == "V3"
    assert ads["set_node_on_first_message_only"] is True
    (service,) = ads["grpc_services"]
    assert service["envoy_grpc"]["cluster_name"] == XDS_CLUSTER_NAME
    backoff = service["envoy_grpc"]["retry_policy"]["retry_back_off"]
    assert backoff == {"base_interval": "0.1s", "max_interval": "1s"}
    for kind in ("cds_config", "lds_config"):
        assert dynamic[kind] == {"ads": {}, "resource_api_version": "V3"}


def test_ip_addresses_make_a_static_cluster_and_host_names_a_dns_one() -> None:
    (static,) = _build()["static_resources"]["clusters"]
    assert static["type"] == "STATIC" and "dns_lookup_family" not in static
    (dns,) = _build(xds_servers=[("cp1", 18000), ("10.0.0.2", 18000)])["static_resources"]["clusters"]
    assert (dns["type"], dns["dns_lookup_family"], dns["respect_dns_ttl"]) == ("STRICT_DNS", "V4_PREFERRED", True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"xds_servers": [("127.0.0.1", 99999)]}, "port must be from 1 to 65535"),
        ({"xds_servers": [("127.0.0.1", 0)]}, "port must be from 1 to 65535"),
        ({"admin_port": -5}, "must be from 0"),
        ({"admin_port": 65536}, "must be from 0"),
    ],
)
def test_ports_out_of_range_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _build(**overrides)


# Every form of `xgate bootstrap` the README and --help show, and the option combinations around them.
DOCUMENTED_FORMS = [
    [],
    ["--xds", "cp1:18000", "--xds", "cp2:18000"],
    ["--xds", "127.0.0.1:18000"],
    ["--xds", "10.0.0.1:18000", "--xds", "10.0.0.2:18000", "--xds", "10.0.0.3:18000"],
    ["--xds", "localhost:18000", "--xds", "10.0.0.2:18000"],
    ["--xds", "[::1]:18000"],
    ["--xds", "xgate-cp.default.svc.cluster.local:18000", "--admin-port", "0"],
    ["--node-id", "edge-1", "--node-cluster", "edge", "--admin-port", "19901"],
    ["--sotw"],
    ["--stats", "0.0.0.0:9902"],
]


@pytest.mark.parametrize("args", DOCUMENTED_FORMS, ids=lambda args: " ".join(args) or "defaults")
def test_every_documented_bootstrap_form_passes_envoy_validate(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(app, ["bootstrap", *args])
    assert result.exit_code == 0, result.output
    path = tmp_path / "envoy.yaml"
    path.write_text(result.output)
    validated = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--xds", "127.0.0.1:99999"], "'127.0.0.1:99999' is not HOST:PORT with a port from 1 to 65535"),
        (["--xds", "127.0.0.1:0"], "'127.0.0.1:0' is not HOST:PORT with a port from 1 to 65535"),
        (["--xds", "cp1"], "'cp1' is not HOST:PORT"),
        (["--xds", "::1:18000"], "write an IPv6 address in brackets"),
        (["--admin-port", "-5"], "-5 is not a port: use 1 to 65535, or 0 for any free port"),
        (["--admin-port", "65536"], "65536 is not a port"),
    ],
)
def test_the_cli_refuses_bad_addresses_with_a_clear_message(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bootstrap", *args])
    assert result.exit_code == 2
    # The usage error is drawn in a box that wraps lines: compare the words.
    shown = " ".join(result.output.replace("│", " ").split())
    assert message in shown, result.output


def test_xds_cluster_lists_every_control_plane() -> None:
    (cluster,) = _build()["static_resources"]["clusters"]
    assert cluster["name"] == XDS_CLUSTER_NAME
    assert cluster["type"] == "STATIC"
    (locality,) = cluster["load_assignment"]["endpoints"]
    addresses = [
        (
            e["endpoint"]["address"]["socket_address"]["address"],
            e["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for e in locality["lb_endpoints"]
    ]
    assert addresses == SERVERS
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    http2 = options["explicit_http_config"]["http2_protocol_options"]
    assert http2["connection_keepalive"] == {"interval": "5s", "timeout": "5s"}


def test_no_xds_server_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        _build(xds_servers=[])


def test_parses_as_bootstrap_proto() -> None:
    # Strict parsing catches misspelled or misplaced fields without starting Envoy.
    message = json_format.ParseDict(_build(), bootstrap_v3.Bootstrap())
    retry = message.dynamic_resources.ads_config.grpc_services[0].envoy_grpc.retry_policy
    assert retry.retry_back_off.base_interval.ToMilliseconds() == 100


def test_envoy_validates_it(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(_build(admin_port=0)))
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_envoy_rejects_a_broken_one(tmp_path: Path) -> None:
    # Guards the test above: validate mode must really be checking the file.
    broken = _build()
    broken["dynamic_resources"]["ads_config"]["api_type"] = "NOT_A_TYPE"
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0


def test_find_envoy_falls_back_to_interpreter_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert Path(find_envoy()).name == "envoy"
