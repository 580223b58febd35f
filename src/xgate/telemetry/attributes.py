"""What a service's span says about one call, read from the request and response messages: the route, the
policy and its decision, the stage, the limit and its outcome. Never a header value, a token or a claim: only
names xgate's own config gives (routes, policies, providers, limits) and the service's answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2 as auth_v3
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_v3
from envoy.service.ratelimit.v3 import rls_pb2 as ratelimit_v3
from opentelemetry.trace import Span

from xgate.plugins.jwt import PROVIDER_KEY
from xgate.plugins.policy import POLICY_KEY, ROUTE_KEY
from xgate.plugins.rate_limit import ROUTE_KEY as LIMIT_ROUTE_KEY

CHECK = "/envoy.service.auth.v3.Authorization/Check"
PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
SHOULD_RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"

ROUTE = "xgate.route"
POLICY = "xgate.policy"
JWT_PROVIDER = "xgate.jwt.provider"
DECISION = "xgate.authz.decision"
STATUS = "xgate.authz.status"
STAGE = "xgate.stage"
LIMIT = "xgate.ratelimit.limit"
OUTCOME = "xgate.ratelimit.outcome"
DESCRIPTOR_KEYS = "xgate.ratelimit.keys"

Describe = Callable[[Span, Any], None]
_UNITS = {unit: name.lower() for name, unit in ratelimit_v3.RateLimitResponse.RateLimit.Unit.items()}
_OUTCOMES = {code: name.lower() for name, code in ratelimit_v3.RateLimitResponse.Code.items()}


def check_request(span: Span, request: auth_v3.CheckRequest) -> None:
    extensions = request.attributes.context_extensions
    for key, attribute in ((ROUTE_KEY, ROUTE), (POLICY_KEY, POLICY), (PROVIDER_KEY, JWT_PROVIDER)):
        if key in extensions:
            span.set_attribute(attribute, extensions[key])


def check_response(span: Span, response: auth_v3.CheckResponse) -> None:
    allowed = response.status.code == 0
    span.set_attribute(DECISION, "allow" if allowed else "deny")
    if not allowed and response.HasField("denied_response"):
        span.set_attribute(STATUS, response.denied_response.status.code)


def process_response(span: Span, response: ext_proc_v3.ProcessingResponse) -> None:
    """The stage the dyeing service set (the first header it sets that is not baggage); none: undyed."""
    if response.WhichOneof("response") != "request_headers":
        return
    for option in response.request_headers.response.header_mutation.set_headers:
        if option.header.key != "baggage":
            value = option.header.raw_value.decode("utf-8", "replace") or option.header.value
            span.set_attribute(STAGE, value)
            return
    span.set_attribute(STAGE, "(undyed)")


def rate_limit_request(span: Span, request: ratelimit_v3.RateLimitRequest) -> None:
    keys: list[str] = []
    for descriptor in request.descriptors:
        for entry in descriptor.entries:
            if entry.key == LIMIT_ROUTE_KEY:
                span.set_attribute(ROUTE, entry.value)
            elif entry.key not in keys:
                keys.append(entry.key)  # what the limit counts by (a client address or claim stays out)
    if keys:
        span.set_attribute(DESCRIPTOR_KEYS, keys)


def rate_limit_response(span: Span, response: ratelimit_v3.RateLimitResponse) -> None:
    span.set_attribute(OUTCOME, _OUTCOMES.get(response.overall_code, str(response.overall_code)))
    for status in response.statuses:
        if status.HasField("current_limit"):
            limit = status.current_limit
            span.set_attribute(LIMIT, f"{limit.requests_per_unit}/{_UNITS.get(limit.unit, limit.unit)}")
            return


# method -> (what the request says, what the response says)
DESCRIBERS: dict[str, tuple[Describe | None, Describe | None]] = {
    CHECK: (check_request, check_response),
    PROCESS: (None, process_response),
    SHOULD_RATE_LIMIT: (rate_limit_request, rate_limit_response),
}
