"""Tracing and logs for every xgate process: OpenTelemetry set up from the standard environment variables, the
services' gRPC spans (children of Envoy's), the control plane's revision journeys, JSON log lines with the trace
id, and the fleet's own counters (Envoy's fail-open paths, JWKS health) read for status and metrics."""

from __future__ import annotations

from xgate.telemetry.grpc import AsyncTraceInterceptor, TraceInterceptor, aio_server_interceptors, server_interceptors
from xgate.telemetry.journey import RevisionJourneys
from xgate.telemetry.logs import LOG_FORMATS, JsonFormatter, LogFormat, setup_logging
from xgate.telemetry.setup import configure_tracing, tracer_provider, tracing_enabled, tracing_requested

__all__ = [
    "LOG_FORMATS",
    "AsyncTraceInterceptor",
    "JsonFormatter",
    "LogFormat",
    "RevisionJourneys",
    "TraceInterceptor",
    "aio_server_interceptors",
    "configure_tracing",
    "server_interceptors",
    "setup_logging",
    "tracer_provider",
    "tracing_enabled",
    "tracing_requested",
]
