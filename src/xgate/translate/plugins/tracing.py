"""The tracing plugin in Envoy: the connection manager's OpenTelemetry tracer, sampling on each route.

The listener carries the tracer (collector, service name) and samples nothing on its own; each route carries its
own sampling, so changing a sampling rate is a route change and never rebuilds the listener. Requests that match
no route are not recorded. Envoy sends its spans over OTLP/gRPC
through a cluster per collector, and injects `traceparent` into the upstream request and into its gRPC calls to
xgate's services (ext_authz, ext_proc, rate limit), whose spans become children of the request's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from envoy.config.core.v3 import grpc_service_pb2 as grpc_service_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.trace.v3 import http_tracer_pb2 as http_tracer_v3
from envoy.config.trace.v3 import opentelemetry_pb2 as opentelemetry_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.type.tracing.v3 import custom_tag_pb2 as custom_tag_v3
from envoy.type.v3 import percent_pb2 as percent_v3
from google.protobuf.message import Message

from xgate.config.schema import Route
from xgate.plugins.tracing import TracingSettings, TracingSpec
from xgate.translate.plugins.base import PluginTranslator
from xgate.translate.plugins.services import service_cluster
from xgate.translate.protos import duration, pack

TRACER = "envoy.tracers.opentelemetry"
COLLECTOR_CLUSTER = "xgate-otel/"  # + the collector's host:port
ROUTE_TAG = "xgate.route"
STAGE_TAG = "xgate.stage"
STAGE_HEADER = "x-xgate-stage"  # the dyeing plugin's default header (read when the span ends, after dyeing)
_EXPORT_TIMEOUT = 1.0
_BUILT_IN = TracingSettings()


def collector_cluster(collector: str) -> str:
    return COLLECTOR_CLUSTER + collector


class TracingTranslator(PluginTranslator[TracingSettings]):
    spec: ClassVar[TracingSpec] = TracingSpec()

    def http_filters(
        self, defaults: TracingSettings | None, manager: hcm_v3.HttpConnectionManager
    ) -> list[hcm_v3.HttpFilter]:
        """No filter: the tracer belongs to the connection manager."""
        settings = defaults or _BUILT_IN
        tracer = opentelemetry_v3.OpenTelemetryConfig(
            grpc_service=grpc_service_v3.GrpcService(
                envoy_grpc=grpc_service_v3.GrpcService.EnvoyGrpc(cluster_name=collector_cluster(settings.collector)),
                timeout=duration(_EXPORT_TIMEOUT),
            ),
            service_name=settings.service_name,
        )
        manager.tracing.CopyFrom(
            hcm_v3.HttpConnectionManager.Tracing(
                provider=http_tracer_v3.Tracing.Http(name=TRACER, typed_config=pack(tracer)),
                random_sampling=percent_v3.Percent(value=0.0),  # every route says its own
                custom_tags=[
                    custom_tag_v3.CustomTag(
                        tag=STAGE_TAG, request_header=custom_tag_v3.CustomTag.Header(name=STAGE_HEADER)
                    )
                ],
            )
        )
        return []

    def route(
        self, settings: TracingSettings | None, route: Route, proto: route_components_v3.Route
    ) -> Sequence[route_components_v3.Route]:
        sampling = 0.0 if settings is None else settings.sampling
        proto.tracing.CopyFrom(
            route_components_v3.Tracing(
                random_sampling=_fraction(sampling),
                operation=route.name,  # Envoy's span is named after the config route (names have no '%')
                custom_tags=[
                    custom_tag_v3.CustomTag(tag=ROUTE_TAG, literal=custom_tag_v3.CustomTag.Literal(value=route.name))
                ],
            )
        )
        return (proto,)

    def resources(self, defaults: TracingSettings | None) -> list[Message]:
        collector = (defaults or _BUILT_IN).collector
        return [service_cluster(collector_cluster(collector), collector, max_streams=64)]


def _fraction(percent: float) -> percent_v3.FractionalPercent:
    """A percentage in ten-thousandths: Envoy draws a route's sampling from the request id modulo 10,000, so
    with a per-million denominator any rate from 1% up sampled every request (bench/tracing.py showed it)."""
    return percent_v3.FractionalPercent(
        numerator=round(percent * 100), denominator=percent_v3.FractionalPercent.TEN_THOUSAND
    )
