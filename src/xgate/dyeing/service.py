"""envoy.service.ext_proc.v3 ExternalProcessor on grpc.aio: request headers -> stage header and baggage.

Envoy opens one stream per request and sends only the request headers (the filter SKIPs everything else).
The route's ext_proc override names the version of the dyeing settings in the gRPC metadata
`x-xgate-dyeing`; the service answers with the stage header and the rewritten baggage, and the filter
clears the route cache so the route's stage entries match. Every message gets an answer: unknown settings
or an error of ours leave the request undyed (it takes the route's default entry), never a gRPC error.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import grpc
from envoy.config.core.v3 import base_pb2 as core_v3
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_v3
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from xgate.dyeing.rules import Dyer, DyeRequest, baggage_with
from xgate.grpcguard import AsyncMalformedGuard
from xgate.listen import bind_grpc, grpc_options
from xgate.plugins.dyeing import EXT_PROC_FILTER, SETTINGS_METADATA, SOURCE_ATTRIBUTE
from xgate.plugins.jwt import jwt_claims
from xgate.telemetry import aio_server_interceptors

log = logging.getLogger("xgate.dyeing")

_OVERWRITE = core_v3.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
UNDYED = "(undyed)"  # metrics: requests passed on without a stage


class DyerRegistry:
    """The rules of every settings version the control plane sends, by key (see plugins.dyeing.settings_key).
    It sends a version before any Envoy's route names it and keeps sending it until none does."""

    def __init__(self) -> None:
        self._current: Mapping[str, Dyer] = MappingProxyType({})

    def replace(self, dyers: Mapping[str, Dyer]) -> None:
        self._current = MappingProxyType(dict(dyers))

    def get(self, key: str) -> Dyer | None:
        return self._current.get(key)

    def keys(self) -> list[str]:
        return sorted(self._current)


class DyeingService(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Answers each request's headers with its stage. `metrics()`: {stage or "(undyed)": count}."""

    def __init__(self, registry: DyerRegistry) -> None:
        self.registry = registry
        self._counts: Counter[str] = Counter()
        self._unknown: set[str] = set()

    def metrics(self) -> dict[str, int]:
        return dict(self._counts)

    async def Process(
        self, requests: AsyncIterator[ext_proc_v3.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ext_proc_v3.ProcessingResponse]:
        key = _metadata_value(context.invocation_metadata(), SETTINGS_METADATA)
        async for request in requests:
            yield self.answer(request, key)

    def answer(self, request: ext_proc_v3.ProcessingRequest, key: str) -> ext_proc_v3.ProcessingResponse:
        """The response to one message (only request headers carry work)."""
        kind = request.WhichOneof("request")
        if kind != "request_headers":
            return _empty(kind)
        try:
            mutation = self.mutation(request, key)
        except Exception:  # a bug of ours must not block traffic: the request goes on undyed
            log.exception("dyeing failed; passing the request on undyed")
            mutation = None
        common = ext_proc_v3.CommonResponse()
        if mutation is not None:
            common.header_mutation.CopyFrom(mutation)
        else:
            self._counts[UNDYED] += 1
        return ext_proc_v3.ProcessingResponse(request_headers=ext_proc_v3.HeadersResponse(response=common))

    def mutation(self, request: ext_proc_v3.ProcessingRequest, key: str) -> ext_proc_v3.HeaderMutation | None:
        dyer = self.registry.get(key)
        if dyer is None:
            if key not in self._unknown:
                self._unknown.add(key)
                log.error("no dyeing settings %r (known: %s); passing requests on undyed", key, self.registry.keys())
            return None
        headers = request_headers(request.request_headers.headers.headers)
        dye = dyer.dye(
            DyeRequest(headers=headers, source=source_address(request), claims=jwt_claims(request.metadata_context))
        )
        self._counts[dye.stage] += 1
        mutation = ext_proc_v3.HeaderMutation()
        if dye.kept:
            return mutation  # a trusted hop's stage and baggage stay as they came
        settings = dyer.settings
        mutation.set_headers.append(_set(settings.header, dye.stage))
        if settings.baggage:
            mutation.set_headers.append(
                _set("baggage", baggage_with(headers.get("baggage"), settings.baggage, dye.stage))
            )
        return mutation


def request_headers(headers: Iterable[core_v3.HeaderValue]) -> Mapping[str, str]:
    """Lower-case name -> value, a repeated header's values joined with "," (as Envoy's matchers see them);
    bytes that are not UTF-8 become U+FFFD, so no exact rule can match them by accident."""
    joined: dict[str, str] = {}
    for header in headers:
        key = header.key.lower()
        value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return MappingProxyType(joined)


def source_address(request: ext_proc_v3.ProcessingRequest) -> str:
    """The client's IP from the `source.address` attribute ("1.2.3.4:5678" or "[::1]:5678"), or ""."""
    attributes = request.attributes.get(EXT_PROC_FILTER)
    if attributes is None or SOURCE_ATTRIBUTE not in attributes.fields:
        return ""
    address: str = attributes.fields[SOURCE_ATTRIBUTE].string_value
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address
    return host.strip("[]")


def _metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str:
    for key, value in metadata or ():
        if key == name:
            return value.decode() if isinstance(value, bytes) else value
    return ""


def _set(key: str, value: str) -> core_v3.HeaderValueOption:
    return core_v3.HeaderValueOption(
        header=core_v3.HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE
    )


def _empty(kind: str | None) -> ext_proc_v3.ProcessingResponse:
    """A do-nothing answer of the kind Envoy expects, for messages the filter should not have sent."""
    response = ext_proc_v3.ProcessingResponse()
    if kind is not None and kind in _ANSWERS:
        getattr(response, kind).SetInParent()
    return response


_ANSWERS = frozenset(
    ("request_headers", "response_headers", "request_body", "response_body", "request_trailers", "response_trailers")
)


@dataclass
class DyeingServer:
    """A running service: the gRPC server and the servicer (for metrics)."""

    grpc_server: grpc.aio.Server
    service: DyeingService
    port: int

    async def stop(self, grace: float | None = 1.0) -> None:
        await self.grpc_server.stop(grace)


async def serve(
    registry: DyerRegistry, *, host: str = "127.0.0.1", port: int = 0, reuse_port: bool = False
) -> DyeingServer:
    """Start the ExternalProcessor service on `host:port` (0: any free port) answering from `registry`.

    Errors: RuntimeError from grpc when the port cannot be bound, PortInUseError when another process holds
    it (unless `reuse_port`: several processes then share it)."""
    service = DyeingService(registry)
    server = grpc.aio.server(
        interceptors=[AsyncMalformedGuard(), *aio_server_interceptors()], options=grpc_options(reuse_port=reuse_port)
    )
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(service, server)
    bound = bind_grpc(server, host, port, "dyeing gRPC, --listen", reuse_port=reuse_port)
    await server.start()
    return DyeingServer(server, service, bound)
