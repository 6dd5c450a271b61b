"""Server-side interceptors: every RPC method must carry the cluster token."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

logger = logging.getLogger(__name__)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Ctx = grpc.aio.ServicerContext[Any, Any]

TOKEN_KEY = "cellray-token"

_REJECT = (
    "missing or wrong cluster token for {method}. Attach with "
    "rt.init(address=..., token_file=PATH), where PATH is the token file printed by "
    "`cellray start --head` (it lives in the cluster's session directory)."
)


def _abort_handler(handler: grpc.RpcMethodHandler[_Req, _Resp],
                   method: str) -> grpc.RpcMethodHandler[_Req, _Resp]:
    """A handler of the same shape as ``handler`` that fails with UNAUTHENTICATED.

    Requests are left undecoded (no deserializer), so a malformed body from an
    unauthenticated peer is never parsed.
    """
    message = _REJECT.format(method=method)

    async def unary(request: Any, context: _Ctx) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request: Any, context: _Ctx) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    ser = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, response_serializer=ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, response_serializer=ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, response_serializer=ser)
    return grpc.unary_unary_rpc_method_handler(unary, response_serializer=ser)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects every call whose metadata lacks the cluster token (constant-time compare)."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails],
                               Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        for key, value in handler_call_details.invocation_metadata or ():
            if key == TOKEN_KEY:
                got = value.encode() if isinstance(value, str) else bytes(value)
                if hmac.compare_digest(got, self._token):
                    return await continuation(handler_call_details)
                break
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return handler
        logger.warning("rejected %s: missing or wrong cluster token", handler_call_details.method)
        return _abort_handler(handler, handler_call_details.method)
