"""The names users import are a contract: this test changes only when the API does, on purpose.

Every package (and module) of xgate that declares `__all__` is pinned here exactly, and one that starts to
declare it without being pinned fails the last test.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import xgate

API: dict[str, list[str]] = {
    "xgate": ["ConfigError", "ConfigIssue", "XgateError", "__version__"],
    "xgate.api": [
        "DYEING_SETTINGS", "JWT_PROVIDER", "KINDS", "MESSAGES", "POLICY", "RATE_LIMIT", "SERVICES", "SERVICE_TYPES",
        "SHORT", "authz_pb2", "duration", "dyeing_pb2", "ratelimit_pb2", "seconds", "type_url",
    ],
    "xgate.authz": [
        "Allow", "AuthorizationService", "AuthzServer", "Condition", "Decision", "Deny", "LoadedPolicy", "Outcome",
        "Policy", "PolicyLoadError", "PolicyRegistry", "PolicyRunner", "Request", "Rule", "RuleError", "Verdict",
        "all_of", "any_of", "cacheable", "claims", "header", "inline", "load_policy", "method", "not_", "path", "rule",
        "serve", "source",
    ],
    "xgate.config": [
        "ConfigSet", "KINDS", "Listener", "ObjectSource", "Route", "Upstream", "load_file", "parse_document",
    ],
    "xgate.controlplane": ["ConfigState", "ControlPlane", "merge_inputs"],
    "xgate.discovery": ["AdsService", "Resource", "Snapshot", "SnapshotCache", "add_to_server", "build_snapshot"],
    "xgate.dyeing": [
        "Dye", "DyeRequest", "DyeingServer", "DyeingService", "Dyer", "DyerRegistry", "baggage_with", "serve",
        "sticky_bucket",
    ],
    "xgate.ir": ["GatewayIR", "ListenerIR", "RouteIR", "build_ir"],
    "xgate.plugins": ["FILTER_ORDER", "PLUGINS", "PluginSpec"],
    "xgate.ratelimit": [
        "Algorithm", "Backend", "Decision", "FailureMode", "Limit", "LimitTable", "Match", "MemoryBackend", "Rate",
        "RateLimitServer", "RateLimitService", "RedisBackend", "serve",
    ],
    "xgate.service": ["Ready", "Service", "ServiceOptions", "run_service"],
    "xgate.sources": ["FileSource", "Revision"],
    "xgate.sources.etcd": ["CompactedError", "EtcdClient", "EtcdRequestError", "EtcdSettings", "EtcdUnavailableError"],
    "xgate.testing": [
        "CliResult", "EtcdCluster", "EtcdProcess", "Gateway", "NginxProcess", "OtlpReceiver", "ReceivedSpan",
        "RedisProcess", "ServiceProcess", "free_port", "run_authz_service", "run_cli", "run_dyeing_service",
        "run_etcd", "run_gateway", "run_nginx", "run_otlp_receiver", "run_ratelimit_service", "run_redis", "scrape",
        "write_atomic",
    ],
    "xgate.telemetry": [
        "AsyncTraceInterceptor", "JsonFormatter", "LOG_FORMATS", "LogFormat", "RevisionJourneys", "TraceInterceptor",
        "aio_server_interceptors", "configure_tracing", "server_interceptors", "setup_logging", "tracer_provider",
        "tracing_enabled", "tracing_requested",
    ],
    "xgate.testing.containers": ["EnvoyContainer", "EtcdContainer", "GatewayStack", "Images", "XgateContainer"],
    "xgate.testing.localstack": ["LocalGateway"],
    "xgate.testing.stack": [
        "ConfigRejected", "GatewayUnderTest", "LISTENER_NAME", "SERVICES", "complete_config", "converged",
        "etcd_revision_applied", "read_status", "start_gateway", "wait_until",
    ],
    "xgate.translate": ["Resources", "Translator", "translate"],
    "xgate.translate.plugins": ["PluginTranslator", "TRANSLATORS", "pack"],
    "xgate.xdsclient": ["Apply", "ClientHealth", "Subscription", "TypeHealth", "XdsClient"],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(API))
def test_public_api(name: str) -> None:
    module = importlib.import_module(name)
    assert sorted(module.__all__) == API[name]
    assert all(hasattr(module, item) for item in module.__all__)


def test_every_declared_api_is_pinned() -> None:
    declared = {"xgate"}
    for info in pkgutil.walk_packages(xgate.__path__, "xgate."):
        if info.name.endswith("__main__") or info.name.startswith("xgate.api.v1."):
            continue  # __main__ runs the CLI; api.v1 is generated
        if "__all__" in vars(importlib.import_module(info.name)):
            declared.add(info.name)
    assert declared == set(API)


def test_one_error_tree() -> None:
    assert issubclass(xgate.ConfigError, xgate.XgateError)
