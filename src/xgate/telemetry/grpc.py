"""Server interceptors that continue a caller's trace in xgate's services.

Envoy, when it traces a request, puts `traceparent` (W3C trace context) in the initial metadata of its calls
to ext_authz, ext_proc and the rate-limit service. Each call here becomes a SERVER span, child of Envoy's span
for that call, named after the gRPC method, with what `attributes` reads from the messages. Current while the
servicer runs, so a log line written meanwhile carries the trace id. A span ends with an ERROR status when the
servicer raises. Installed only when this process exports spans (`server_interceptors()` is empty otherwise).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from xgate.telemetry.attributes import DESCRIBERS, Describe
from xgate.telemetry.setup import tracing_enabled

_SCOPE = "xgate.grpc"


def _carrier(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    return {key: value for key, value in metadata or () if isinstance(value, str)}


def _start(tracer: Tracer, method: str, metadata: Iterable[tuple[str, Any]] | None) -> trace.Span:
    service, _, name = method.lstrip("/").partition("/")
    return tracer.start_span(
        method.lstrip("/"),
        context=propagate.extract(_carrier(metadata)),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )


def _describe(describe: Describe | None, span: trace.Span, message: Any) -> None:
    if describe is not None and span.is_recording():
        describe(span, message)


def _failed(span: trace.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


class TraceInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """For grpc.server (threads; authz): unary-unary methods."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer or trace.get_tracer(_SCOPE)
        self._traced: dict[str, Any] = {}

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        traced = self._traced.get(details.method)
        if traced is None:
            traced = handler._replace(unary_unary=self._wrap(details.method, handler.unary_unary))
            self._traced[details.method] = traced
        return traced

    def _wrap(self, method: str, behaviour: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        on_request, on_response = DESCRIBERS.get(method, (None, None))
        tracer = self._tracer

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            span = _start(tracer, method, context.invocation_metadata())
            with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
                _describe(on_request, span, request)
                try:
                    response = behaviour(request, context)
                except BaseException as exc:
                    _failed(span, exc)
                    raise
                _describe(on_response, span, response)
                return response

        return unary


class AsyncTraceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """For grpc.aio servers: unary-unary (ratelimit) and stream-stream methods (dyeing: one stream per request,
    one span per stream)."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer or trace.get_tracer(_SCOPE)
        self._traced: dict[str, Any] = {}

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        traced = self._traced.get(details.method)
        if traced is None:
            traced = _wrap_async(self._tracer, details.method, handler)
            self._traced[details.method] = traced
        return traced


def _wrap_async(tracer: Tracer, method: str, handler: Any) -> Any:
    on_request, on_response = DESCRIBERS.get(method, (None, None))
    if handler.unary_unary is not None:
        answer = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span = _start(tracer, method, context.invocation_metadata())
            with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
                _describe(on_request, span, request)
                try:
                    response = await answer(request, context)
                except BaseException as exc:
                    _failed(span, exc)
                    raise
                _describe(on_response, span, response)
                return response

        return handler._replace(unary_unary=unary)
    if handler.stream_stream is not None:
        answers = handler.stream_stream

        async def described(requests: AsyncIterator[Any], span: trace.Span) -> AsyncIterator[Any]:
            async for request in requests:
                _describe(on_request, span, request)
                yield request

        # An async generator function itself: grpc.aio looks at the handler's kind to know how to drive it.
        async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span = _start(tracer, method, context.invocation_metadata())
            with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
                try:
                    async for response in answers(described(requests, span), context):
                        _describe(on_response, span, response)
                        yield response
                except GeneratorExit:
                    raise  # the stream was closed: not the servicer's failure
                except BaseException as exc:
                    _failed(span, exc)
                    raise

        return handler._replace(stream_stream=stream)
    return handler


def server_interceptors() -> list[TraceInterceptor]:
    """The interceptor for a grpc.server, when this process exports spans; else none (no cost per call)."""
    return [TraceInterceptor()] if tracing_enabled() else []


def aio_server_interceptors() -> list[AsyncTraceInterceptor]:
    """The interceptor for a grpc.aio server, when this process exports spans; else none."""
    return [AsyncTraceInterceptor()] if tracing_enabled() else []
