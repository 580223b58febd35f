"""An OTLP/gRPC receiver for tests: a real TraceService on a loopback port that keeps every span it is sent.

`async with run_otlp_receiver() as receiver:` point Envoy's tracing plugin at `receiver.address` (host:port) and
xgate's processes at `receiver.endpoint` (OTEL_EXPORTER_OTLP_ENDPOINT), then `await receiver.wait_for(check)`
until the spans say what the test needs (`receiver.spans`, each with its service name and decoded ids).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_service_v1
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_service_grpc
from opentelemetry.proto.common.v1 import common_pb2

from xgate.testing.gateway import wait_for


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as received: ids in hex (parent "" for a root), times in ns since the epoch."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    start: int
    end: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: tuple[str, ...] = ()


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


@dataclass
class OtlpReceiver:
    """The spans received so far, in arrival order; `address` for Envoy, `endpoint` for OTel SDKs."""

    port: int
    spans: list[ReceivedSpan] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def receive(self, request: trace_service_v1.ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            attributes = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
            service = str(attributes.get("service.name", ""))
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            start=span.start_time_unix_nano,
                            end=span.end_time_unix_nano,
                            attributes={item.key: _value(item.value) for item in span.attributes},
                            status_code=span.status.code,
                            status_message=span.status.message,
                            events=tuple(event.name for event in span.events),
                        )
                    )

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    def of(self, service: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.service == service]

    async def wait_for(
        self, check: Callable[[Sequence[ReceivedSpan]], Any], timeout: float = 20.0, what: str = "the spans"
    ) -> None:
        """Until `check(spans)` is truthy (exporters batch: Envoy flushes every 5 s, the SDK every 5 s)."""
        await wait_for(lambda: check(list(self.spans)), timeout, what, interval=0.05)


class _TraceService(trace_service_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    async def Export(
        self, request: trace_service_v1.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_v1.ExportTraceServiceResponse:
        self._receiver.receive(request)
        return trace_service_v1.ExportTraceServiceResponse()


@contextlib.asynccontextmanager
async def run_otlp_receiver(port: int = 0) -> AsyncIterator[OtlpReceiver]:
    """A TraceService on 127.0.0.1:`port` (0: any) until the block ends."""
    server = grpc.aio.server()
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    receiver = OtlpReceiver(bound)
    trace_service_grpc.add_TraceServiceServicer_to_server(_TraceService(receiver), server)  # type: ignore[no-untyped-call]
    await server.start()
    try:
        yield receiver
    finally:
        await server.stop(0.5)
