"""Tracing for one xgate process, from OpenTelemetry's standard environment variables.

`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), e.g. `http://127.0.0.1:4317`, turns it
on: spans go there over OTLP/gRPC in batches. `OTEL_SERVICE_NAME` names the process (default `xgate-<command>`),
`OTEL_TRACES_SAMPLER` / `_ARG` choose the sampling (default: follow the caller, else trace everything), and the
exporter's own variables (headers, TLS, timeout) apply. Without an endpoint nothing is set up and tracing costs
nothing: the services install no interceptor, the control plane records no revision journey.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracing_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """An OTLP endpoint is set, and the SDK is not switched off (`OTEL_SDK_DISABLED=true`)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def tracer_provider(
    service: str, exporter: SpanExporter | None = None, environ: Mapping[str, str] = os.environ
) -> TracerProvider:
    """A provider that batches spans to `exporter` (default: OTLP/gRPC as the environment says), its service
    name `OTEL_SERVICE_NAME` or `service`. The SDK flushes it when the process exits."""
    name = environ.get("OTEL_SERVICE_NAME", "").strip() or service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    if exporter is None:
        # Imported here: the gRPC exporter and its protos load only in processes that export.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def configure_tracing(service: str) -> TracerProvider | None:
    """Make this process trace (see the module) when the environment asks for it; the provider, or None."""
    if not tracing_requested():
        return None
    provider = tracer_provider(service)
    trace.set_tracer_provider(provider)
    return provider


def tracing_enabled() -> bool:
    """Whether this process exports spans (configure_tracing set a provider)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)
