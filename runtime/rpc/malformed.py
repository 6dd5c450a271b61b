"""Requests that are not valid protobuf get ``INVALID_ARGUMENT``, naming the method.

grpc.aio parses a request with the method's deserializer before the servicer runs, and a
parse error there becomes an ``UNKNOWN`` status with a traceback in the server's log. The
``MalformedRequests`` interceptor wraps each method's deserializer so that a request that
cannot be parsed (truncated, random bytes, a field of the wrong wire type) is answered
with ``INVALID_ARGUMENT`` instead, before the servicer sees anything, with one short line
in the log (rate limited like every daemon log). Requests that parse pass through untouched.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

__all__ = ["MalformedRequests"]

logger = logging.getLogger(__name__)

_Ctx = grpc.aio.ServicerContext[Any, Any]


class _Malformed:
    """Stands for a request that could not be parsed."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _safe(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError, TypeError) as err:
            return _Malformed(str(err) or type(err).__name__)

    return parse


async def _refuse(method: str, request: _Malformed, context: _Ctx) -> None:
    logger.warning("refused a malformed %s request: %s", method, request.why)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{method}: the request is not a valid message ({request.why})")


def _checked_stream(method: str, requests: AsyncIterator[Any],
                    context: _Ctx) -> AsyncIterator[Any]:
    async def each() -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Malformed):
                await _refuse(method, request, context)
            yield request

    return each()


def _guard(handler: Any, method: str) -> Any:
    """``handler`` with its deserializer made safe (``Any``: grpc's type hints describe its
    handlers as synchronous ones)."""
    parse = _safe(handler.request_deserializer)
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: _Ctx) -> Any:
            if isinstance(request, _Malformed):
                await _refuse(method, request, context)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, parse, serialize)
    if handler.unary_stream is not None:
        stream = handler.unary_stream
        async def replies(request: Any, context: _Ctx) -> Any:
            if isinstance(request, _Malformed):
                await _refuse(method, request, context)
            async for reply in stream(request, context):
                yield reply

        async def written(request: Any, context: _Ctx) -> Any:
            if isinstance(request, _Malformed):  # a handler that writes with context.write
                await _refuse(method, request, context)
            return await stream(request, context)

        behaviour = replies if inspect.isasyncgenfunction(stream) else written
        return grpc.unary_stream_rpc_method_handler(behaviour, parse, serialize)
    if handler.stream_stream is not None:
        both = handler.stream_stream

        async def each_reply(requests: AsyncIterator[Any], context: _Ctx) -> Any:
            async for reply in both(_checked_stream(method, requests, context), context):
                yield reply

        async def all_written(requests: AsyncIterator[Any], context: _Ctx) -> Any:
            return await both(_checked_stream(method, requests, context), context)

        duplex = each_reply if inspect.isasyncgenfunction(both) else all_written
        return grpc.stream_stream_rpc_method_handler(duplex, parse, serialize)
    if handler.stream_unary is not None:
        many = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: _Ctx) -> Any:
            return await many(_checked_stream(method, requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, parse, serialize)
    return handler


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Answer requests that cannot be parsed with ``INVALID_ARGUMENT`` (module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _guard(handler, handler_call_details.method.rsplit("/", 1)[-1])
