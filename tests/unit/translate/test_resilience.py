"""Resilience settings -> Envoy, piece by piece: retries split by method, endpoint priorities, outlier rules
switched off, split targets that fall back to each other (the goldens show whole translations)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from xgate.config.resilience import OutlierDetection, Retries
from xgate.config.schema import Listener, Route, Upstream
from xgate.incremental import _fallbacks
from xgate.ir.model import ListenerIR, RouteIR
from xgate.translate import names
from xgate.translate.cluster import translate_endpoints
from xgate.translate.failover import fallback_clusters, route_aggregates, split_target
from xgate.translate.resilience import outlier_detection
from xgate.translate.route import translate_route, translate_routes


def _route(**fields: Any) -> Route:
    return Route.model_validate({"name": "r", "upstream": "app", **fields})


def _entries(route: Route) -> list[tuple[str, str]]:
    """(method matcher, retry_on) of each Envoy route the config route becomes."""
    found = []
    for proto in translate_route(RouteIR(route, {}), ()):
        methods = [h.string_match for h in proto.match.headers if h.name == ":method"]
        shown = (methods[0].exact or methods[0].safe_regex.regex) if methods else "*"
        found.append((shown, proto.route.retry_policy.retry_on))
    return found


def test_default_retries_are_safe_for_every_method_and_live_on_the_virtual_host() -> None:
    # One route, no policy of its own: it inherits the virtual host's, so a plain route stays small.
    (proto,) = translate_route(RouteIR(_route(), {}), ())
    assert not proto.route.HasField("retry_policy")
    listener = ListenerIR(Listener(name="l", port=1), (RouteIR(_route(), {}),), ())
    (host,) = translate_routes(listener).virtual_hosts
    assert host.retry_policy.retry_on == "connect-failure,refused-stream,reset-before-request"
    assert host.retry_policy.retry_host_predicate[0].name == "envoy.retry_host_predicates.previous_hosts"


def test_retries_that_could_repeat_a_request_apply_to_idempotent_methods_only() -> None:
    route = _route(retries={"retry_on": ["5xx", "reset", "connect-failure"]})
    assert _entries(route) == [
        ("^(DELETE|GET|HEAD|OPTIONS|PUT|TRACE)$", "5xx,reset,connect-failure"),
        ("*", "connect-failure,reset-before-request"),  # reset becomes reset-before-request
    ]
    # A route that matches only idempotent methods, or only others, stays one route.
    get = _route(match={"methods": ["GET"]}, retries={"retry_on": ["5xx"]})
    assert _entries(get) == [("GET", "5xx")]
    post = _route(match={"methods": ["POST", "GET"]}, retries={"retry_on": ["5xx"], "methods": ["GET"]})
    assert _entries(post) == [("GET", "5xx"), ("^(GET|POST)$", "")]  # 5xx has no safe part: POST not retried
    assert _entries(_route(retries={"retry_on": ["gateway-error"]}, match={"methods": ["PATCH"]})) == [("PATCH", "")]


def test_status_codes_imply_their_condition_and_the_condition_needs_codes() -> None:
    assert Retries(status_codes=(409,), retry_on=("reset",)).conditions == ("reset", "retriable-status-codes")
    with pytest.raises(ValidationError, match="needs status_codes"):
        Retries(retry_on=("retriable-status-codes",))


def test_retries_off_and_redirects_carry_no_policy() -> None:
    (none,) = translate_route(RouteIR(_route(retries=None), {}), ())
    assert none.route.retry_policy.num_retries.value == 0 and none.route.HasField("retry_policy")  # overrides
    proto = translate_route(RouteIR(Route.model_validate({"name": "r", "redirect": {"path": "/x"}}), {}), ())[0]
    assert not proto.HasField("route")


def test_endpoint_priorities_are_ranked_without_gaps() -> None:
    upstream = Upstream.model_validate(
        {"name": "u", "endpoints": [{"host": "10.0.0.1", "port": 1, "priority": 5}, "10.0.0.2:1", "10.0.0.3:1"]}
    )
    assignment = translate_endpoints(upstream)
    assert [(group.priority, len(group.lb_endpoints)) for group in assignment.endpoints] == [(0, 2), (1, 1)]
    assert assignment.endpoints[1].lb_endpoints[0].endpoint.address.socket_address.address == "10.0.0.1"


def test_an_outlier_rule_counted_0_is_never_enforced() -> None:
    proto = outlier_detection(OutlierDetection(consecutive_5xx=0, success_rate=None))
    assert proto.enforcing_consecutive_5xx.value == 0 and proto.HasField("enforcing_consecutive_5xx")
    assert proto.enforcing_success_rate.value == 0 and proto.HasField("enforcing_success_rate")
    assert proto.split_external_local_origin_errors and proto.always_eject_one_host.value


def test_each_split_target_falls_back_to_the_others_heaviest_first() -> None:
    route = Route.model_validate(
        {
            "name": "r",
            "split": [
                {"upstream": "a", "weight": 10},
                {"upstream": "b", "weight": 30},
                {"upstream": "c", "weight": 30},
                {"upstream": "off", "weight": 0},
            ],
        }
    )
    assert route_aggregates(route) == [
        ("fallback/a/b,c", ("a", "b", "c")),
        ("fallback/b/c,a", ("b", "c", "a")),
        ("fallback/c/b,a", ("c", "b", "a")),
    ]
    assert split_target(route, "off") == "upstream/off"  # a target without traffic falls back nowhere
    assert [c.name for c in fallback_clusters(route)] == ["fallback/a/b,c", "fallback/b/c,a", "fallback/c/b,a"]
    assert names.origin("fallback/a/b,c") == "fallback from upstream a to upstream b, upstream c"
    single = Route.model_validate({"name": "r", "split": [{"upstream": "a", "weight": 1}]})
    assert route_aggregates(single) == [] and split_target(single, "a") == "upstream/a"


def test_a_route_change_that_adds_a_split_needs_the_full_compile() -> None:
    # The fast path keeps the clusters of the last full compile: a new aggregate must come from a full one.
    split = Route.model_validate(
        {"name": "r", "split": [{"upstream": "a", "weight": 1}, {"upstream": "b", "weight": 1}]}
    )
    assert _fallbacks(split) == {"fallback/a/b", "fallback/b/a"}
    assert _fallbacks(_route()) == frozenset()
