"""runtime.rpc.errors: the one mapping of gRPC status codes to cellray's exceptions.

Real ``grpc.aio.AioRpcError`` instances go in; each must come out as its class of
``runtime.exceptions``, keep the builtin base that callers catching Python's errors rely
on, name the server and its address, and carry what the server said.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from runtime import exceptions as ex
from runtime.rpc import errors

ADDRESS = "127.0.0.1:6380"


def _err(code: grpc.StatusCode, details: str = "what the server said") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


# (status code, the class it maps to, the builtin base it must keep)
MAPPING: list[tuple[grpc.StatusCode, type[ex.ClusterError], type[BaseException]]] = [
    (grpc.StatusCode.UNAVAILABLE, ex.ConnectionLostError, ConnectionError),
    (grpc.StatusCode.CANCELLED, ex.ConnectionLostError, ConnectionError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ex.ConnectionLostError, ConnectionError),
    (grpc.StatusCode.UNAUTHENTICATED, ex.UnauthenticatedError, PermissionError),
    (grpc.StatusCode.FAILED_PRECONDITION, ex.IncompatibleVersionError, RuntimeError),
    (grpc.StatusCode.INVALID_ARGUMENT, ex.InvalidRequestError, ValueError),
    (grpc.StatusCode.NOT_FOUND, ex.NotFoundError, LookupError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, ex.RpcTimeoutError, TimeoutError),
]
#: Codes no server of ours sends on purpose: a bug, reported as such.
INTERNAL = [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ABORTED,
            grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.DATA_LOSS]


@pytest.mark.parametrize(("code", "cls", "builtin"), MAPPING, ids=[c.name for c, _, _ in MAPPING])
def test_each_status_code_maps_to_its_class_with_its_builtin_base(
        code: grpc.StatusCode, cls: type[ex.ClusterError], builtin: type[BaseException]) -> None:
    out = errors.translate(_err(code), "GCS", ADDRESS)
    assert type(out) is cls
    assert isinstance(out, builtin)
    assert isinstance(out, ex.ClusterError)
    assert ADDRESS in str(out) or code == grpc.StatusCode.NOT_FOUND
    assert "what the server said" in str(out)


@pytest.mark.parametrize("code", INTERNAL, ids=[c.name for c in INTERNAL])
def test_other_codes_are_internal_errors_that_ask_for_a_report(code: grpc.StatusCode) -> None:
    out = errors.translate(_err(code), "node manager", ADDRESS)
    assert type(out) is ex.InternalError
    assert code.name in str(out) and ADDRESS in str(out) and "bug" in str(out)


def test_every_status_code_is_covered() -> None:
    covered = {c for c, _, _ in MAPPING} | set(INTERNAL)
    assert covered == set(grpc.StatusCode) - {grpc.StatusCode.OK}


def test_cancelled_by_this_side_is_client_closed_not_connection_lost() -> None:
    out = errors.translate(_err(grpc.StatusCode.CANCELLED), "GCS", ADDRESS, closed=True)
    assert type(out) is ex.ClientClosedError
    assert not isinstance(out, ConnectionError)
    # closed=True changes nothing for the other codes
    assert type(errors.translate(_err(grpc.StatusCode.UNAVAILABLE), "GCS", ADDRESS, closed=True)) \
        is ex.ConnectionLostError


def test_unavailable_names_the_server_and_says_what_to_do_next() -> None:
    gcs = str(errors.translate(_err(grpc.StatusCode.UNAVAILABLE), "GCS", ADDRESS))
    assert "the GCS at 127.0.0.1:6380" in gcs and "cellray start --head" in gcs
    node = str(errors.translate(_err(grpc.StatusCode.UNAVAILABLE, ""), "node manager", ADDRESS))
    assert "the node manager at 127.0.0.1:6380" in node and "UNAVAILABLE" in node


def test_the_address_is_kept_as_an_attribute() -> None:
    out = errors.translate(_err(grpc.StatusCode.UNAVAILABLE), "GCS", ADDRESS)
    assert getattr(out, "address", None) == ADDRESS  # set by ClusterError(**fields)


def test_call_translates_and_chains_the_grpc_error() -> None:
    async def fails() -> int:
        raise _err(grpc.StatusCode.NOT_FOUND, "no such row")

    async def succeeds() -> int:
        return 7

    assert asyncio.run(errors.call(succeeds(), "GCS", ADDRESS)) == 7
    with pytest.raises(ex.NotFoundError, match="no such row") as info:
        asyncio.run(errors.call(fails(), "GCS", ADDRESS))
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
    with pytest.raises(ex.ClientClosedError):
        asyncio.run(errors.call(_raise(grpc.StatusCode.CANCELLED), "GCS", ADDRESS, closed=True))


async def _raise(code: grpc.StatusCode) -> int:
    raise _err(code)


def test_stream_yields_items_then_translates_the_failure() -> None:
    async def items() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise _err(grpc.StatusCode.RESOURCE_EXHAUSTED, "fell behind")

    async def collect(got: list[int]) -> None:
        async for item in errors.stream(items(), "GCS", ADDRESS):
            got.append(item)

    got: list[int] = []
    with pytest.raises(ex.ConnectionLostError, match="fell behind"):
        asyncio.run(collect(got))
    assert got == [1, 2]


def test_failed_precondition_with_the_fenced_trailer_is_node_died_naming_the_node() -> None:
    """Issue 12 (fencing): the GCS refuses a node it declared dead; the node must learn it is
    fenced, not that its versions differ."""
    err = grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(),
                               grpc.aio.Metadata((errors.FENCED_NODE, "ab" * 16)),
                               details="Heartbeat: node abababababab was declared dead: it must rejoin")
    out = errors.translate(err, "GCS", ADDRESS)
    assert type(out) is ex.NodeDiedError
    assert out.node_id == "ab" * 16 and out.address == ADDRESS
    assert str(out) == (f"the GCS at {ADDRESS} refused this node: Heartbeat: node abababababab was "
                        "declared dead: it must rejoin")
    other = grpc.aio.Metadata(("cellray-something-else", "x"))
    plain = grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(), other)
    assert type(errors.translate(plain, "GCS", ADDRESS)) is ex.IncompatibleVersionError
