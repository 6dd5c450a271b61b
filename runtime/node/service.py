"""The NodeManager gRPC servicer: decode, hand to the node, encode. Nothing else.

The servicer sees the node only through :class:`NodeCalls`: the three calls of a Session
stream and one named call per other RPC (``NodeManager`` has them all).
"""

from __future__ import annotations

import asyncio
import logging
import platform
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import cloudpickle
import grpc

from runtime import _ids
from runtime.exceptions import NotFoundError
from runtime.node.bundles import check_bundles
from runtime.node.sessions import Conn, client_kind
from runtime.protocol import common_pb2, node_pb2, node_pb2_grpc
from runtime.protocol.checks import spec_problem
from runtime.protocol.states import ClientKind

logger = logging.getLogger(__name__)

PYTHON_VERSION = platform.python_version()
CLOUDPICKLE_VERSION: str = cloudpickle.__version__


def version_mismatch(hello: node_pb2.Hello) -> str | None:
    """Why a peer's environment cannot talk to this node, or None when it can."""
    if hello.python_version != PYTHON_VERSION or hello.cloudpickle_version != CLOUDPICKLE_VERSION:
        return (f"this {hello.kind or 'client'} runs Python {hello.python_version} / cloudpickle "
                f"{hello.cloudpickle_version}, but the node runs Python {PYTHON_VERSION} / "
                f"cloudpickle {CLOUDPICKLE_VERSION}. Use the same environment on every node "
                "and driver (pickles only work between identical versions).")
    return None


class NodeCalls(Protocol):
    """What the servicer asks of the node: one call per RPC, and a Session's three."""

    def hello(self, conn: Conn, hello: node_pb2.Hello) -> node_pb2.NodeOp:
        """Register a Session; its Welcome."""
        ...

    def handle(self, conn: Conn, batch: node_pb2.ClientBatch) -> None:
        """One batch of ops from a Session's client."""
        ...

    def disconnect(self, conn: Conn) -> None:
        """A Session ended."""
        ...

    def accept_forwarded(self, request: node_pb2.ForwardTaskRequest) -> str | None:
        """Take a task placed here: why not (a node declared dead), or ""/None when taken."""
        ...

    def remote_result(self, request: node_pb2.ReportResultsRequest) -> None: ...

    def remote_results(self, requests: list[node_pb2.ReportResultsRequest]) -> None: ...

    def accept_calls(self, request: node_pb2.ForwardActorCallsRequest) -> bool: ...

    def kill_hosted_actor(self, actor_id: bytes, no_restart: bool, graceful: bool = False) -> bool: ...
    def cancel_forwarded(self, cancels: list[node_pb2.CancelTask], home_node_id: bytes) -> None: ...
    def drop_pulled(self, objects: list[common_pb2.ObjectData], node_id: bytes) -> None: ...

    def release_remote_holds(self, object_ids: list[bytes], node_id: bytes | None) -> None: ...

    def forward_logs(self, lines: node_pb2.LogLines) -> None: ...

    def object_chunks(self, oid: bytes, puller: bytes) -> AsyncIterator[node_pb2.ObjectChunk]:
        """The object's bytes in chunks; raises ``NotFoundError`` when it is not held here."""
        ...

    def node_info(self) -> node_pb2.GetNodeInfoReply: ...

    def prepare_bundles(self, bundles: list[common_pb2.Bundle]) -> str:
        """Set placement-group bundles aside, all or none: "" when done, else why not."""
        ...

    def commit_bundles(self, bundles: list[common_pb2.Bundle]) -> str:
        """Make prepared bundles usable: "" when done, else why not."""
        ...

    def release_bundles(self, bundles: list[common_pb2.Bundle]) -> None:
        """Release bundles (what runs in them stops)."""
        ...

    def request_stop(self) -> None: ...


_Ctx = grpc.aio.ServicerContext[Any, Any]


class NodeServicer(node_pb2_grpc.NodeManagerServicer):
    """Serves one node (``attach()``-ed once the server's port is known)."""

    m: NodeCalls

    def __init__(self, node: NodeCalls | None = None) -> None:
        if node is not None:
            self.m = node

    def attach(self, node: NodeCalls) -> None:
        """Serve ``node`` from now on (the node needs the server's port to be built)."""
        self.m = node

    async def Session(self, request_iterator: AsyncIterator[node_pb2.ClientBatch],
                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[node_pb2.NodeBatch]:
        conn = Conn()
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        if not first.ops or first.ops[0].WhichOneof("op") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "a Session must start with a Hello op")
        hello = first.ops[0].hello
        if len(hello.client_id) != 16 or client_kind(hello.kind) is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "Hello needs a 16-byte client_id and a kind of "
                                + " or ".join(repr(k.value) for k in ClientKind))
        why = version_mismatch(hello)
        if why is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)
        welcome = self.m.hello(conn, hello)
        yield node_pb2.NodeBatch(ops=[welcome])
        if len(first.ops) > 1:
            self.m.handle(conn, conn.landed(node_pb2.ClientBatch(ops=first.ops[1:])))
        reader = asyncio.get_running_loop().create_task(self._read(conn, request_iterator))
        try:
            while True:
                await conn.wake.wait()
                conn.wake.clear()
                if conn.out:
                    ops, conn.out = conn.out, []
                    yield node_pb2.NodeBatch(ops=ops)
                if conn.closed:
                    if conn.reason:  # the node was fenced: the client learns why
                        reader.cancel()  # first: a read cut off by the abort is no error
                        await asyncio.gather(reader, return_exceptions=True)
                        await context.abort(grpc.StatusCode.UNAVAILABLE, conn.reason)
                    return
        finally:
            reader.cancel()
            self.m.disconnect(conn)

    async def _read(self, conn: Conn, requests: AsyncIterator[node_pb2.ClientBatch]) -> None:
        try:
            async for batch in requests:
                try:
                    self.m.handle(conn, conn.landed(batch))
                except Exception:  # one bad batch must not end the session: log it, read on
                    logger.exception("error handling a batch from client %s", _ids.short(conn.client_id))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception:  # a broken stream of any kind ends the session; log why
            logger.exception("session reader failed")
        finally:
            conn.close()

    async def GetNodeInfo(self, request: node_pb2.GetNodeInfoRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> node_pb2.GetNodeInfoReply:
        return self.m.node_info()

    async def ForwardTask(self, request: node_pb2.ForwardTaskRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> node_pb2.ForwardTaskReply:
        bad = spec_problem(request.spec) or ("" if request.home_address else "home_address is empty")
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ForwardTask: {bad}")
        why_not = self.m.accept_forwarded(request)
        if why_not:
            return node_pb2.ForwardTaskReply(accepted=False, why_not=why_not)
        return node_pb2.ForwardTaskReply(accepted=True)

    async def ForwardActorCalls(self, request: node_pb2.ForwardActorCallsRequest,
                                context: _Ctx) -> node_pb2.ForwardActorCallsReply:
        if len(request.actor_id) != 16:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "ForwardActorCalls needs a 16-byte actor_id")
        for i, call in enumerate(request.calls):
            spec = call.spec
            bad = spec_problem(spec)
            if bad or spec.actor_id != request.actor_id or not call.home_address:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"ForwardActorCalls: calls[{i}] needs a valid spec ({bad or 'ok'}), the "
                                    "request's actor_id and a home_address")
        if not self.m.accept_calls(request):
            return node_pb2.ForwardActorCallsReply(accepted=False, why_not="the actor does not live here")
        return node_pb2.ForwardActorCallsReply(accepted=True)

    async def KillHostedActor(self, request: node_pb2.KillActor, context: _Ctx) -> node_pb2.KillActorReply:
        if len(request.actor_id) != 16:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "KillHostedActor needs a 16-byte actor_id")
        return node_pb2.KillActorReply(found=self.m.kill_hosted_actor(request.actor_id, request.no_restart,
                                                                       request.graceful))

    async def CancelTasks(self, request: node_pb2.CancelTasksRequest,
                          context: _Ctx) -> node_pb2.CancelTasksReply:
        for i, c in enumerate(request.tasks):
            if len(c.task_id) != 16:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"CancelTasks: tasks[{i}] needs a 16-byte task_id")
        self.m.cancel_forwarded(list(request.tasks), request.home_node_id)
        return node_pb2.CancelTasksReply()

    async def DropObjects(self, request: node_pb2.DropObjectsRequest,
                          context: _Ctx) -> node_pb2.DropObjectsReply:
        for i, data in enumerate(request.objects):
            if len(data.object_id) != 20 or not data.inline:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"DropObjects: objects[{i}] needs a 20-byte object_id and "
                                    "its new inline value")
        self.m.drop_pulled(list(request.objects), request.node_id)
        return node_pb2.DropObjectsReply()

    async def ReportResultsBatch(self, request: node_pb2.ReportResultsBatchRequest,
                                 context: _Ctx) -> node_pb2.ReportResultsReply:
        for i, report in enumerate(request.reports):
            if len(report.task_id) != 16:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"ReportResultsBatch: reports[{i}] needs a 16-byte task_id")
        self.m.remote_results(list(request.reports))
        return node_pb2.ReportResultsReply()

    async def ReportResults(self, request: node_pb2.ReportResultsRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> node_pb2.ReportResultsReply:
        if len(request.task_id) != 16:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ReportResults needs a 16-byte task_id")
        self.m.remote_result(request)
        return node_pb2.ReportResultsReply()

    async def PullObject(self, request: node_pb2.PullObjectRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[node_pb2.ObjectChunk]:
        try:
            async for chunk in self.m.object_chunks(request.object_id, request.node_id):
                yield chunk
        except NotFoundError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))

    async def FreeObjects(self, request: node_pb2.FreeObjectsRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> node_pb2.FreeObjectsReply:
        self.m.release_remote_holds(list(request.object_ids), request.node_id or None)
        return node_pb2.FreeObjectsReply()

    async def ForwardLogs(self, request: node_pb2.LogLines,
                          context: grpc.aio.ServicerContext[Any, Any]) -> node_pb2.ForwardLogsReply:
        self.m.forward_logs(request)
        return node_pb2.ForwardLogsReply()

    async def PrepareBundles(self, request: node_pb2.BundlesRequest, context: _Ctx) -> node_pb2.BundlesReply:
        return await self._bundles("PrepareBundles", request, context, self.m.prepare_bundles)

    async def CommitBundles(self, request: node_pb2.BundlesRequest, context: _Ctx) -> node_pb2.BundlesReply:
        return await self._bundles("CommitBundles", request, context, self.m.commit_bundles)

    async def ReleaseBundles(self, request: node_pb2.BundlesRequest, context: _Ctx) -> node_pb2.BundlesReply:
        return await self._bundles("ReleaseBundles", request, context, self.m.release_bundles)

    async def _bundles(self, verb: str, request: node_pb2.BundlesRequest, context: _Ctx,
                       call: Callable[[list[common_pb2.Bundle]], str | None]) -> node_pb2.BundlesReply:
        bad = check_bundles(request.bundles)
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{verb}: {bad}")
        why_not = call(list(request.bundles)) or ""
        return node_pb2.BundlesReply(ok=not why_not, why_not=why_not)

    async def Shutdown(self, request: node_pb2.ShutdownRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> node_pb2.ShutdownReply:
        asyncio.get_running_loop().call_soon(self.m.request_stop)
        return node_pb2.ShutdownReply()
