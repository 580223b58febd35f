"""Malformed gRPC requests to xgate's services: refused with INVALID_ARGUMENT and one WARNING line (method, peer,
reason), where grpc would log a full traceback at ERROR for each one.

grpc parses a request before any servicer code runs and logs the parse error itself (`grpc._common` in the
synchronous server, `grpc._cython.cygrpc` in grpc.aio). These interceptors hand grpc a parser that returns a
`Malformed` marker instead of raising, and refuse the marker before the servicer sees it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

log = logging.getLogger("xgate.grpc")


@dataclass(frozen=True)
class Malformed:
    """A request message that did not parse; `reason` is protobuf's."""

    reason: str


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Malformed(str(exc))

    return parse_or_mark


def _refusal(method: str, context: Any, malformed: Malformed) -> str:
    """Log the one line and return the status details the client gets."""
    log.warning("malformed request to %s from %s: %s", method, context.peer(), malformed.reason)
    return f"malformed request: {malformed.reason}"


class MalformedGuard(grpc.ServerInterceptor):  # type: ignore[misc]
    """For grpc.server (threads): unary-unary methods refuse malformed requests (the only kind authz has)."""

    def __init__(self) -> None:
        self._guarded: dict[str, Any] = {}  # method -> guarded handler: built once, not per call

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        guarded = self._guarded.get(details.method)
        if guarded is None:
            method, behaviour = details.method, handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, Malformed):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(method, context, request))
                return behaviour(request, context)

            guarded = handler._replace(request_deserializer=_tolerant(handler.request_deserializer), unary_unary=unary)
            self._guarded[details.method] = guarded
        return guarded


class AsyncMalformedGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """For grpc.aio servers: unary-unary and stream-stream methods refuse malformed requests (ratelimit,
    dyeing); a malformed message in a stream ends that stream only."""

    def __init__(self) -> None:
        self._guarded: dict[str, Any] = {}

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        guarded = self._guarded.get(details.method)
        if guarded is None:
            guarded = _guard_async(details.method, handler)
            self._guarded[details.method] = guarded
        return guarded


def _guard_async(method: str, handler: Any) -> Any:
    parse = _tolerant(handler.request_deserializer)
    if handler.unary_unary is not None:
        answer = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(method, context, request))
            return await answer(request, context)

        return handler._replace(request_deserializer=parse, unary_unary=unary)
    if handler.stream_stream is not None:
        answers = handler.stream_stream

        async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(method, context, request))
                yield request

        # An async generator function itself: grpc.aio looks at the handler's kind to know how to drive it.
        async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in answers(checked(requests, context), context):
                yield response

        return handler._replace(request_deserializer=parse, stream_stream=stream)
    return handler
