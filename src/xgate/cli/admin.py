"""The CLI's client of the admin API (`--admin HOST:PORT`, the control plane's xDS port): status, dump, explain."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from xgate.api.v1 import admin_pb2
from xgate.cli.status import StatusError

ADMIN_SERVICE = "/xgate.api.v1.Admin/"  # the path of xgate.adminapi's methods (the CLI may not import the runtime)
TIMEOUT = 5.0
Reply = TypeVar("Reply", bound=Message)


def plain(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as the JSON document it carries; whole numbers become ints again (a Struct holds doubles), so it
    prints as the status port's JSON does."""

    def back(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        if isinstance(value, dict):
            return {key: back(item) for key, item in value.items()}
        if isinstance(value, list):
            return [back(item) for item in value]
        return value

    result: dict[str, Any] = back(json_format.MessageToDict(struct))
    return result


def _target(admin: str) -> str:
    host, colon, port = admin.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise StatusError(f"--admin {admin!r}: give the control plane's xDS address as HOST:PORT, like 127.0.0.1:18000")
    return admin


def _error(admin: str, exc: grpc.RpcError) -> StatusError:
    code, details = exc.code(), exc.details()
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return StatusError(details)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return StatusError(
            f"{admin} has no xgate admin API (not the control plane's xDS port, or an older one: use --url)"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return StatusError(f"cannot reach the control plane's admin API at {admin}: {details}")
    return StatusError(f"the admin API at {admin} answered {code.name}: {details}")


def _call(admin: str, method: str, request: Message, reply: type[Reply]) -> Reply:
    with grpc.insecure_channel(_target(admin)) as channel:
        call = channel.unary_unary(
            ADMIN_SERVICE + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=reply.FromString,
        )
        try:
            answer: Reply = call(request, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            raise _error(admin, exc) from None
    return answer


def admin_status(admin: str) -> dict[str, Any]:
    """The status report (what GET /status answers). Errors: StatusError in one line."""
    return plain(_call(admin, "GetStatus", admin_pb2.GetStatusRequest(), admin_pb2.StatusReport).report)


def admin_dump(admin: str, node: str | None) -> dict[str, Any]:
    """What GET /config_dump answers for `node` (None: the only Envoy). Errors: StatusError, e.g. no such node."""
    request = admin_pb2.ConfigDumpRequest(node=node or "")
    return plain(_call(admin, "ConfigDump", request, admin_pb2.ConfigDumpReply).dump)


def admin_explain(admin: str, method: str, url: str, headers: list[str], listener: str | None) -> dict[str, Any]:
    """`xgate explain`'s answer from the config the control plane serves. Errors: StatusError (a bad URL too)."""
    request = admin_pb2.ExplainRequest(method=method, url=url, headers=headers, listener=listener or "")
    return plain(_call(admin, "Explain", request, admin_pb2.ExplainReply).explanation)


def watch_reports(admin: str, interval_ms: int = 0) -> Generator[dict[str, Any]]:
    """Each status report WatchStatus sends (one at once, then one per change), until the caller stops.

    Errors: StatusError when the stream cannot start or breaks."""
    with grpc.insecure_channel(_target(admin)) as channel:
        call = channel.unary_stream(
            ADMIN_SERVICE + "WatchStatus",
            request_serializer=admin_pb2.WatchStatusRequest.SerializeToString,
            response_deserializer=admin_pb2.StatusReport.FromString,
        )
        stream = call(admin_pb2.WatchStatusRequest(interval_ms=interval_ms))
        try:
            for reply in stream:
                yield plain(reply.report)
        except grpc.RpcError as exc:
            raise _error(admin, exc) from None
        finally:
            stream.cancel()
