"""xgate's admin API over gRPC (protos/xgate/api/v1/admin.proto), on the xDS port: the status port's answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from google.protobuf import struct_pb2

from xgate.api.v1 import admin_pb2
from xgate.controlplane import ControlPlane
from xgate.discovery.dump import DumpError, choose, config_dump
from xgate.errors import ConfigError
from xgate.explain import ExplainError, explain_request
from xgate.translate.matching import MatchingError

ADMIN_SERVICE = "xgate.api.v1.Admin"
_DEFAULT_INTERVAL_MS = 1000
_MIN_INTERVAL_MS = 100


def as_struct(document: Any) -> struct_pb2.Struct:
    """A JSON document as a Struct, after the trip through JSON the status port's answer makes (tuples become
    lists, keys strings), so both carry the same document."""
    struct = struct_pb2.Struct()
    struct.update(json.loads(json.dumps(document)))
    return struct


class AdminService:
    """Each method answers with what the JSON endpoint of the same name computes, by the same function."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    async def get_status(
        self, _request: admin_pb2.GetStatusRequest, _context: grpc.aio.ServicerContext
    ) -> admin_pb2.StatusReport:
        return admin_pb2.StatusReport(report=as_struct(self.plane.report()))

    async def watch_status(
        self, request: admin_pb2.WatchStatusRequest, _context: grpc.aio.ServicerContext
    ) -> AsyncIterator[admin_pb2.StatusReport]:
        """Looks at the report every interval and sends it when it differs from the last one sent: a change is
        seen within an interval, and an idle fleet costs the client nothing."""
        interval = max(request.interval_ms or _DEFAULT_INTERVAL_MS, _MIN_INTERVAL_MS) / 1000
        last: Any = None
        while True:
            report = as_struct(self.plane.report())
            if report != last:
                last = report
                yield admin_pb2.StatusReport(report=report)
            await asyncio.sleep(interval)

    async def config_dump(
        self, request: admin_pb2.ConfigDumpRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ConfigDumpReply:
        try:
            proxy = choose(self.plane.cache.status.connected.values(), request.node or None)
        except DumpError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        dump = await asyncio.to_thread(config_dump(proxy))
        return admin_pb2.ConfigDumpReply(dump=as_struct(dump))

    async def explain(
        self, request: admin_pb2.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ExplainReply:
        compile_served = self.plane.served_compiler()
        if compile_served is None:
            return await _fail(context, grpc.StatusCode.FAILED_PRECONDITION, "the control plane serves no config yet")
        try:
            compiled = await asyncio.to_thread(compile_served)
            result = explain_request(
                compiled, request.method, request.url, list(request.headers), request.listener or None
            )
        except (ExplainError, MatchingError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ConfigError as exc:  # the served config compiled once: only a bug of ours gets here
            await context.abort(grpc.StatusCode.INTERNAL, f"the served config no longer compiles: {exc}")
        return admin_pb2.ExplainReply(explanation=as_struct(result), matched=result["route"] is not None)


async def _fail(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort raises")


def add_admin_to_server(server: grpc.aio.Server, plane: ControlPlane) -> None:
    """Register the Admin service (generic handlers, as ADS is: protos.sh writes messages, not stubs)."""
    service = AdminService(plane)
    handlers = {
        "GetStatus": grpc.unary_unary_rpc_method_handler(
            service.get_status,
            request_deserializer=admin_pb2.GetStatusRequest.FromString,
            response_serializer=admin_pb2.StatusReport.SerializeToString,
        ),
        "WatchStatus": grpc.unary_stream_rpc_method_handler(
            service.watch_status,
            request_deserializer=admin_pb2.WatchStatusRequest.FromString,
            response_serializer=admin_pb2.StatusReport.SerializeToString,
        ),
        "ConfigDump": grpc.unary_unary_rpc_method_handler(
            service.config_dump,
            request_deserializer=admin_pb2.ConfigDumpRequest.FromString,
            response_serializer=admin_pb2.ConfigDumpReply.SerializeToString,
        ),
        "Explain": grpc.unary_unary_rpc_method_handler(
            service.explain,
            request_deserializer=admin_pb2.ExplainRequest.FromString,
            response_serializer=admin_pb2.ExplainReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADMIN_SERVICE, handlers),))
