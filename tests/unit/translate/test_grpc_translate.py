"""gRPC routes in translation: status codes join the route's retries on every Envoy route it becomes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from xgate.config.schema import Route
from xgate.ir.model import RouteIR
from xgate.translate.retries import virtual_host_retry_policy
from xgate.translate.route import translate_route


def _route(**fields: Any) -> Route:
    return Route.model_validate(
        {"name": "g", "upstream": "u", "match": {"grpc": {"service": "a.Svc"}}, "grpc": {"retry_on": ["unavailable"]}}
        | fields
    )


def _policies(route: Route) -> list[tuple[int, list[str]]]:
    protos = translate_route(RouteIR(route, {}), ())
    return [
        (proto.route.retry_policy.num_retries.value, proto.route.retry_policy.retry_on.split(",")) for proto in protos
    ]


def test_default_retries_get_the_virtual_hosts_policy_plus_the_codes() -> None:
    # A route's policy replaces the virtual host's as a whole: the codes alone would drop connect-failure etc.
    inherited = virtual_host_retry_policy()
    ((attempts, conditions),) = _policies(_route())
    assert attempts == inherited.num_retries.value
    assert conditions == [*inherited.retry_on.split(","), "unavailable"]


def test_codes_reach_both_routes_of_a_method_split() -> None:
    # `reset` is retried for idempotent methods only: two Envoy routes; a gRPC call (a POST) takes the second.
    policies = _policies(_route(retries={"attempts": 3, "retry_on": ["reset"]}))
    assert len(policies) == 2
    for attempts, conditions in policies:
        assert attempts == 3 and conditions[-1] == "unavailable", policies
    assert "reset" not in policies[1][1]


@pytest.mark.parametrize("retries", [None, {"attempts": 0}])
def test_codes_on_a_route_without_retries_are_refused(retries: Any) -> None:
    with pytest.raises(ValidationError, match=r"grpc\.retry_on: retries are switched off"):
        _route(retries=retries)
