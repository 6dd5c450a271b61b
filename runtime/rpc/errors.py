"""The one place where gRPC status codes become cellray's exceptions.

Every client of a cluster server (GCS, global scheduler, node manager) passes the
``grpc.aio.AioRpcError`` it got through :func:`translate`, so a user sees the same
exception class, from the tree in ``runtime.exceptions``, whichever server refused::

    UNAVAILABLE          ConnectionLostError        (is a ConnectionError)
    UNAUTHENTICATED      UnauthenticatedError       (is a PermissionError)
    FAILED_PRECONDITION  IncompatibleVersionError   (is a RuntimeError)
                         NodeDiedError              (with the trailer ``FENCED_NODE``: the GCS
                                                     declared the calling node dead)
    INVALID_ARGUMENT     InvalidRequestError        (is a ValueError)
    NOT_FOUND            NotFoundError              (is a LookupError)
    DEADLINE_EXCEEDED    RpcTimeoutError            (is a TimeoutError)
    RESOURCE_EXHAUSTED   ConnectionLostError        (the server dropped a slow subscriber)
    CANCELLED            ClientClosedError          (when this side closed the channel)
                         ConnectionLostError        (otherwise)
    anything else        InternalError

The message names the server and its address, what it said, and what to do next.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import grpc

from runtime.exceptions import (
    ClientClosedError,
    ClusterError,
    ConnectionLostError,
    IncompatibleVersionError,
    InternalError,
    InvalidRequestError,
    NodeDiedError,
    NotFoundError,
    RpcTimeoutError,
    UnauthenticatedError,
)
from runtime.rpc import security

_T = TypeVar("_T")

#: Trailing-metadata key of a FAILED_PRECONDITION that fences a node: the GCS declared the
#: node (its id in hex is the value) dead, so it must rejoin under a new id.
FENCED_NODE = "cellray-fenced-node"

_HINTS = {
    "GCS": ("Is a cluster running? Start one with `cellray start --head` or `%cluster start`, "
            "or check the address."),
    "node manager": "Is the cluster still running? Its logs are in the session directory's logs/.",
    "global scheduler": "The scheduler may have stopped; the node tries another replica.",
}


def translate(err: grpc.aio.AioRpcError, server: str, address: str, *,
              closed: bool = False) -> ClusterError:
    """The exception of ``runtime.exceptions`` that stands for ``err``.

    ``server`` names the kind of server ("GCS", "node manager", "global scheduler"),
    ``address`` where it is; ``closed`` says this side closed the channel itself.
    """
    code, details = err.code(), err.details() or ""
    where = f"the {server} at {address}"
    if code == grpc.StatusCode.CANCELLED and closed:
        return ClientClosedError(f"the connection to {where} was closed during the call",
                                 address=address)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        hint = _HINTS.get(server, "") + (_tls_hint(details) if server == "GCS" else "")
        return ConnectionLostError(f"could not reach {where} ({details or code.name}). {hint}".rstrip(),
                                   address=address)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ConnectionLostError(f"{where} disconnected this client: {details}", address=address)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return UnauthenticatedError(f"{where} refused the call: {details}", address=address)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        fenced = _trailer(err, FENCED_NODE)
        if fenced is not None:
            return NodeDiedError(f"{where} refused this node: {details}", node_id=fenced, address=address)
        return IncompatibleVersionError(f"{where} refused this client: {details}", address=address)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequestError(f"{where} refused a malformed request: {details}",
                                   address=address)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(details or f"{where} has no such entry", address=address)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return RpcTimeoutError(f"{where} did not answer in time ({details})", address=address)
    return InternalError(
        f"{where} failed a call with {code.name}: {details}. This is a cellray bug; please "
        "report it with the logs in the session directory's logs/.", address=address)


def _tls_hint(details: str) -> str:
    """What to check about TLS when the GCS could not be reached (its details say how)."""
    try:
        tls = security.current().tls
    except ValueError:  # bad TLS settings: the process reported them where it read them
        return ""
    if not tls:
        return (" If that cluster runs with TLS, attach with its join bundle "
                "(rt.init(address=..., bundle=FILE), or --bundle FILE).")
    lower = details.lower()
    if any(word in lower for word in ("ssl", "handshake", "certificate", "tls")):
        return (" The TLS handshake failed: that server runs without TLS, or with another "
                "cluster's CA; use the join bundle of the cluster at that address.")
    return ""


def _trailer(err: grpc.aio.AioRpcError, key: str) -> str | None:
    """The value of ``key`` in the error's trailing metadata, or None."""
    for k, v in err.trailing_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


async def call(rpc: Awaitable[_T], server: str, address: str, *, closed: bool = False) -> _T:
    """Await one unary call; a gRPC error leaves as :func:`translate` says."""
    try:
        return await rpc
    except grpc.aio.AioRpcError as err:
        raise translate(err, server, address, closed=closed) from err


async def stream(rpc: AsyncIterator[_T], server: str, address: str) -> AsyncIterator[_T]:
    """Iterate a server stream; a gRPC error leaves as :func:`translate` says."""
    try:
        async for item in rpc:
            yield item
    except grpc.aio.AioRpcError as err:
        raise translate(err, server, address) from err
