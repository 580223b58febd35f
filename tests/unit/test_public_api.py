"""The names users import are a contract: this test changes only when the API does, on purpose."""

from __future__ import annotations

import xgate
import xgate.authz
import xgate.discovery
import xgate.dyeing
import xgate.ratelimit
import xgate.testing
import xgate.translate


def test_public_api() -> None:
    assert sorted(xgate.__all__) == ["ConfigError", "ConfigIssue", "XgateError", "__version__"]
    assert sorted(xgate.testing.__all__) == [
        "CliResult", "EtcdCluster", "EtcdProcess", "Gateway", "NginxProcess", "RedisProcess", "free_port",
        "run_authz_service", "run_cli", "run_dyeing_service", "run_etcd", "run_gateway", "run_nginx", "run_redis",
        "scrape", "write_atomic",
    ]  # fmt: skip
    assert sorted(xgate.translate.__all__) == ["Resources", "Translator", "translate"]
    assert {"Snapshot", "SnapshotCache", "add_to_server"} <= set(xgate.discovery.__all__)
    assert {"LimitTable", "Limit", "serve", "MemoryBackend", "RedisBackend"} <= set(xgate.ratelimit.__all__)
    assert {"Allow", "Deny", "Request", "PolicyRegistry", "serve", "inline"} <= set(xgate.authz.__all__)
    assert {"Dyer", "DyeRequest", "DyerRegistry", "serve", "sticky_bucket"} <= set(xgate.dyeing.__all__)
    assert issubclass(xgate.ConfigError, xgate.XgateError)
