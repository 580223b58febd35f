"""JSON log lines carry the current trace id; the services' span attributes come from the messages, never from
headers or tokens; nothing is installed when the process does not trace."""

from __future__ import annotations

import json
import logging

from envoy.config.core.v3 import base_pb2 as core_v3
from envoy.service.auth.v3 import external_auth_pb2 as auth_v3
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_v3
from envoy.service.ratelimit.v3 import rls_pb2 as ratelimit_v3
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from xgate.telemetry import JsonFormatter, aio_server_interceptors, server_interceptors, tracing_requested
from xgate.telemetry.attributes import (
    check_request,
    check_response,
    process_response,
    rate_limit_request,
    rate_limit_response,
)


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("xgate.test", logging.WARNING, __file__, 1, message, (), None)


def test_json_lines_carry_the_trace_id_inside_a_span() -> None:
    formatter = JsonFormatter()
    outside = json.loads(formatter.format(_record("plain")))
    assert outside["message"] == "plain" and outside["level"] == "WARNING" and "trace_id" not in outside
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        inside = json.loads(formatter.format(_record("in a span")))
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert inside["span_id"] == format(span.get_span_context().span_id, "016x")


def _span_attributes(describe: list[tuple[object, object]]) -> dict[str, object]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("call") as span:
        for function, message in describe:
            function(span, message)  # type: ignore[operator]
    (finished,) = exporter.get_finished_spans()
    return dict(finished.attributes or {})


def test_authz_spans_say_route_policy_and_decision_not_the_token() -> None:
    request = auth_v3.CheckRequest()
    request.attributes.context_extensions.update({"xgate_route": "orders", "xgate_policy": "members"})
    request.attributes.request.http.headers["authorization"] = "Bearer secret.token.value"
    denied = auth_v3.CheckResponse()
    denied.status.code = 7
    denied.denied_response.status.code = 403
    attributes = _span_attributes([(check_request, request), (check_response, denied)])
    assert attributes == {
        "xgate.route": "orders",
        "xgate.policy": "members",
        "xgate.authz.decision": "deny",
        "xgate.authz.status": 403,
    }


def test_dyeing_and_rate_limit_spans() -> None:
    response = ext_proc_v3.ProcessingResponse()
    for key, value in (("x-xgate-stage", b"canary"), ("baggage", b"xgate-stage=canary")):
        response.request_headers.response.header_mutation.set_headers.append(
            core_v3.HeaderValueOption(header=core_v3.HeaderValue(key=key, raw_value=value))
        )
    undyed = ext_proc_v3.ProcessingResponse()
    undyed.request_headers.SetInParent()
    assert _span_attributes([(process_response, response)]) == {"xgate.stage": "canary"}
    assert _span_attributes([(process_response, undyed)]) == {"xgate.stage": "(undyed)"}
    request = ratelimit_v3.RateLimitRequest(domain="xgate")
    descriptor = request.descriptors.add()
    descriptor.entries.add(key="xgate_route", value="login")
    descriptor.entries.add(key="remote_address", value="203.0.113.9")
    answer = ratelimit_v3.RateLimitResponse(overall_code=ratelimit_v3.RateLimitResponse.OVER_LIMIT)
    status = answer.statuses.add(code=ratelimit_v3.RateLimitResponse.OVER_LIMIT)
    status.current_limit.requests_per_unit = 20
    status.current_limit.unit = ratelimit_v3.RateLimitResponse.RateLimit.MINUTE
    attributes = _span_attributes([(rate_limit_request, request), (rate_limit_response, answer)])
    assert attributes == {
        "xgate.route": "login",
        "xgate.ratelimit.keys": ("remote_address",),  # what it counts by; the client's address stays out
        "xgate.ratelimit.outcome": "over_limit",
        "xgate.ratelimit.limit": "20/minute",
    }


def test_nothing_is_installed_without_an_endpoint() -> None:
    assert not tracing_requested({})
    assert not tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_SDK_DISABLED": "true"})
    assert tracing_requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4317"})
    assert server_interceptors() == [] and aio_server_interceptors() == []  # this test process sets no provider
