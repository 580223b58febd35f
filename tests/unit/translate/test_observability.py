"""The tracing plugin's settings per level and the access log's checks (the Envoy side is in the golden case
tests/golden/translate/observability, which a real Envoy validates)."""

from __future__ import annotations

import json

import pytest

from xgate.config.load import parse_document
from xgate.errors import ConfigError
from xgate.pipeline import compile_config
from xgate.plugins.tracing import TracingSettings

BASE = {
    "listeners": [{"name": "l", "port": 10000}],
    "upstreams": [{"name": "u", "endpoints": ["127.0.0.1:1"]}],
}


def _issues(document: dict[str, object]) -> list[str]:
    try:
        compile_config(parse_document(json.dumps({**BASE, **document}), "gw.json"))
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    return []


def test_a_route_may_set_only_its_sampling() -> None:
    route = {"name": "r", "upstream": "u", "plugins": {"tracing": {"sampling": 1, "collector": "10.0.0.1:4317"}}}
    (issue,) = _issues({"plugins": {"tracing": True}, "routes": [route]})
    assert "route r field plugins.tracing: collector: set in the global or listener defaults" in issue
    route["plugins"] = {"tracing": {"sampling": 1}}
    assert _issues({"plugins": {"tracing": True}, "routes": [route]}) == []


def test_a_routes_sampling_keeps_its_listeners_collector() -> None:
    document = {
        "plugins": {"tracing": {"collector": "10.0.0.9:4317", "service_name": "edge"}},
        "routes": [{"name": "r", "upstream": "u", "plugins": {"tracing": {"sampling": 2.5}}}],
    }
    compiled = compile_config(parse_document(json.dumps({**BASE, **document}), "gw.json"))
    settings = compiled.ir.listeners[0].routes[0].plugins["tracing"]
    assert isinstance(settings, TracingSettings)
    assert (settings.collector, settings.service_name, settings.sampling) == ("10.0.0.9:4317", "edge", 2.5)
    assert "xgate-otel/10.0.0.9:4317" in compiled.resources.clusters
    (proto,) = compiled.resources.route_config("routes/l").virtual_hosts[0].routes
    assert proto.tracing.random_sampling.numerator == 250  # per ten thousand (see translate/plugins/tracing.py)


@pytest.mark.parametrize(
    ("access_log", "message"),
    [
        ({"path": "logs/access.log"}, "use stdout, stderr or an absolute file path"),
        ({"fields": {"tenant": "%REQ(x-tenant"}}, "'%REQ(x-tenant' is not an Envoy command operator"),
        ({"fields": {"who": "%NOT_AN_OPERATOR%"}}, "'%NOT_AN_OPERATOR%' is not an Envoy command operator"),
        ({"fields": {"bad name": "%ROUTE_NAME%"}}, "field name 'bad name'"),
        ({"sampling": 101}, "sampling"),
    ],
)
def test_bad_access_logs_are_refused(access_log: dict[str, object], message: str) -> None:
    listener = {"name": "l", "port": 10000, "access_log": access_log}
    issues = _issues({"listeners": [listener], "routes": [{"name": "r", "upstream": "u"}]})
    assert len(issues) == 1 and message in issues[0], issues
    assert "listener l field access_log" in issues[0]
