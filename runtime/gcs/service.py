"""The GCS gRPC services: thin servicers over ``GcsState``, pub/sub, and node liveness.

Each RPC decodes its request, calls one ``GcsState`` method, publishes the changes that
call recorded, and encodes the reply. State calls are synchronous and run between
awaits on the one event loop, so the order in which changes are published is the order
in which they were applied, and a subscriber's snapshot plus its later changes never
miss or repeat a change (see ``Tables.Subscribe``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc

from runtime.config import Settings
from runtime.exceptions import InvalidRequestError, NodeDiedError
from runtime.gcs import validate
from runtime.gcs.reservations import BundleNodes, GrpcBundleNodes, PlacementManager
from runtime.gcs.state import TABLES, Change, GcsState
from runtime.gcs.storage import StorageError
from runtime.gcs.validate import check_load, check_node_row
from runtime.protocol import gcs_pb2, gcs_pb2_grpc
from runtime.rpc.errors import FENCED_NODE

logger = logging.getLogger(__name__)

#: How long a write a client relies on waits to be saved before it is answered anyway.
_SAVE_WAIT_S = 1.0

__all__ = ["GcsService", "Publisher"]

_Ctx = grpc.aio.ServicerContext[Any, Any]
_S = TypeVar("_S", bound="_Servicer")
_Req = TypeVar("_Req")
_Rep = TypeVar("_Rep")


class _Subscription:
    """One subscriber's tables and bounded queue; ``dropped`` says why it was cut off."""

    def __init__(self, tables: frozenset[str], queue_size: int) -> None:
        self.tables = tables
        self.queue: asyncio.Queue[gcs_pb2.PubMessage] = asyncio.Queue(queue_size)
        self.dropped: tuple[grpc.StatusCode, str] | None = None

    def drop(self, code: grpc.StatusCode, reason: str) -> None:
        """Free the queued messages and wake the stream, which then aborts with ``code``."""
        self.dropped = (code, reason)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(gcs_pb2.PubMessage())


class Publisher:
    """Fans table changes out to subscribers, each with a bounded queue.

    A subscriber whose queue is full is dropped (its stream ends with RESOURCE_EXHAUSTED
    and it may resubscribe for a fresh snapshot), so a slow client never grows the head.
    """

    def __init__(self, queue_size: int = Settings.subscriber_queue_size) -> None:
        self.queue_size = queue_size
        self._subs: set[_Subscription] = set()

    def subscribe(self, tables: Iterable[str]) -> _Subscription:
        sub = _Subscription(frozenset(tables), self.queue_size)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: _Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, changes: Iterable[Change]) -> None:
        for change in changes:
            msg = None  # built once, shared by every subscriber of the table
            for sub in list(self._subs):
                if change.table not in sub.tables:
                    continue
                if msg is None:
                    msg = gcs_pb2.PubMessage(table=change.table, key=change.key, value=change.value,
                                             deleted=change.deleted)
                try:
                    sub.queue.put_nowait(msg)
                except asyncio.QueueFull:
                    self._subs.discard(sub)
                    logger.warning("dropping a subscriber to %s: %d changes behind", sorted(sub.tables),
                                   self.queue_size)
                    sub.drop(grpc.StatusCode.RESOURCE_EXHAUSTED, (
                        f"this subscriber fell {self.queue_size} changes behind and was disconnected; "
                        "read the stream faster, then subscribe again for a fresh snapshot"))

    def close(self, reason: str) -> None:
        """End every subscription with UNAVAILABLE and ``reason``."""
        for sub in list(self._subs):
            sub.drop(grpc.StatusCode.UNAVAILABLE, reason)
        self._subs.clear()

    def __len__(self) -> int:
        return len(self._subs)


class GcsService:
    """The head's services over one ``GcsState``; ``adders()`` feeds ``create_server``.

    Parameters
    ----------
    state
        The tables.
    session_dir
        Reported by ``Admin.Ping``.
    heartbeat_ms, node_timeout_ms
        How often node liveness is checked, and the silence after which a node is dead.
    queue_size
        Messages a subscriber may fall behind before it is disconnected
        (``Settings.subscriber_queue_size``).
    token, bundle_nodes
        How the placement groups' bundles are reserved on nodes: over gRPC with the cluster
        ``token`` (default), or through ``bundle_nodes`` (tests pass fakes).
    cluster_id, storage
        Reported by ``Admin.Ping``: the id kept in the storage (``storage_open``; the GCS
        process always passes it) and the backend's description. Without an id (services
        built in-process by tests) clients cannot tell a restarted GCS from the one before.

    ``shutdown_requested`` is set by ``Admin.Shutdown``; the process owning the server
    waits on it, then calls ``close()`` and stops the server.
    """

    def __init__(self, state: GcsState, *, session_dir: str = "",
                 heartbeat_ms: int = Settings.heartbeat_ms, node_timeout_ms: int = Settings.node_timeout_ms,
                 queue_size: int = Settings.subscriber_queue_size, token: str = "",
                 bundle_nodes: BundleNodes | None = None, cluster_id: str = "",
                 storage: str = "memory", flush: Callable[[float], None] | None = None) -> None:
        self.state = state
        #: Saves every write so far (a persistent backend's write-behind), or None.
        self._flush = flush
        self.session_dir = session_dir
        self.cluster_id, self.storage = cluster_id, storage
        self.heartbeat_ms, self.node_timeout_ms = heartbeat_ms, node_timeout_ms
        self.publisher = Publisher(queue_size)
        self.shutdown_requested = asyncio.Event()
        self._liveness: asyncio.Task[None] | None = None
        self.placement = PlacementManager(state, bundle_nodes or GrpcBundleNodes(token), self.commit,
                                          retry_s=max(heartbeat_ms / 1000, 0.05))

    def adders(self) -> list[tuple[Callable[[Any, grpc.aio.Server], None], Any]]:
        return [(gcs_pb2_grpc.add_NodeInfoServicer_to_server, _NodeInfo(self)),
                (gcs_pb2_grpc.add_JobsServicer_to_server, _Jobs(self)),
                (gcs_pb2_grpc.add_FunctionsServicer_to_server, _Functions(self)),
                (gcs_pb2_grpc.add_TablesServicer_to_server, _Tables(self)),
                (gcs_pb2_grpc.add_ActorsServicer_to_server, _Actors(self)),
                (gcs_pb2_grpc.add_SchedulersServicer_to_server, _Schedulers(self)),
                (gcs_pb2_grpc.add_PlacementGroupsServicer_to_server, _PlacementGroups(self)),
                (gcs_pb2_grpc.add_AdminServicer_to_server, _Admin(self))]

    async def saved(self) -> None:
        """Return once every write so far is in the storage: called before answering a
        write that a client relies on and would not send again (a function export, a job, an
        actor's name or row, a kv entry), so a GCS killed right after still has it. Task
        events and object locations stay write-behind: their senders report them again."""
        if self._flush is None:
            return
        try:
            await asyncio.to_thread(self._flush, _SAVE_WAIT_S)
        except StorageError as err:
            # The storage is away (a Redis restarting): the write stays queued and is saved
            # when it is back; the call is not held up for it (only a GCS killed meanwhile
            # would lose it).
            logger.info("answering before the write is saved: %s", err)

    def commit(self) -> None:
        """Publish the changes the state recorded since the last commit; a change of the nodes
        table gives waiting placement groups another try."""
        changes = self.state.take_changes()
        self.publisher.publish(changes)
        if any(c.table == "nodes" for c in changes):
            self.placement.nodes_changed()

    def start(self) -> None:
        """Start the node-liveness loop on the running event loop."""
        self._liveness = asyncio.get_running_loop().create_task(self._watch_liveness(), name="gcs-liveness")
        self.placement.start()

    async def close(self) -> None:
        """Stop the liveness loop and end every subscription (the server is stopped after)."""
        if self._liveness is not None:
            self._liveness.cancel()
            await asyncio.gather(self._liveness, return_exceptions=True)
            self._liveness = None
        await self.placement.close()
        self.publisher.close("the GCS is shutting down; reconnect once a cluster is running again")

    async def _watch_liveness(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_ms / 1000)
            try:
                self.state.check_dead_nodes(self.node_timeout_ms / 1000)
            except Exception:  # keep watching: one bad row must not stop failure detection
                logger.exception("node liveness check failed")
            self.commit()


def _rpc(fn: Callable[[_S, _Req, _Ctx], Awaitable[_Rep]]) -> Callable[[_S, _Req, _Ctx], Awaitable[_Rep]]:
    """Map ``InvalidRequestError`` to INVALID_ARGUMENT, ``NodeDiedError`` (a call under the
    id of a node declared dead, see ``fencing``) to FAILED_PRECONDITION with the trailer
    ``FENCED_NODE``, and ``StorageError`` (a write the storage refuses: disk full) to
    UNAVAILABLE; publish the call's changes."""

    @functools.wraps(fn)
    async def wrapper(self: _S, request: _Req, context: _Ctx) -> _Rep:
        try:
            return await fn(self, request, context)
        except InvalidRequestError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{fn.__name__}: {err}")
            raise  # abort() raises; this line only satisfies the type checker
        except NodeDiedError as err:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{fn.__name__}: {err}",
                                trailing_metadata=((FENCED_NODE, getattr(err, "node_id", "")),))
            raise
        except StorageError as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{fn.__name__}: {err}")
            raise
        finally:
            self._gcs.commit()

    return wrapper


class _Servicer:
    def __init__(self, gcs: GcsService) -> None:
        self._gcs = gcs
        self._state = gcs.state


class _NodeInfo(_Servicer, gcs_pb2_grpc.NodeInfoServicer):
    @_rpc
    async def RegisterNode(self, request: gcs_pb2.RegisterNodeRequest,
                           context: _Ctx) -> gcs_pb2.RegisterNodeReply:
        check_node_row(request.node)
        self._state.register_node(request.node)
        await self._gcs.saved()
        return gcs_pb2.RegisterNodeReply(num_shards=self._state.num_shards)

    @_rpc
    async def Heartbeat(self, request: gcs_pb2.HeartbeatRequest, context: _Ctx) -> gcs_pb2.HeartbeatReply:
        check_load(request.load)
        return gcs_pb2.HeartbeatReply(known=self._state.heartbeat(request.node_id, request.load))

    @_rpc
    async def UnregisterNode(self, request: gcs_pb2.UnregisterNodeRequest,
                             context: _Ctx) -> gcs_pb2.UnregisterNodeReply:
        self._state.unregister_node(request.node_id, request.cause)
        return gcs_pb2.UnregisterNodeReply()


class _Jobs(_Servicer, gcs_pb2_grpc.JobsServicer):
    @_rpc
    async def RegisterJob(self, request: gcs_pb2.RegisterJobRequest,
                          context: _Ctx) -> gcs_pb2.RegisterJobReply:
        validate.check_job_row(request.job)
        job_id = self._state.register_job(request.job)
        await self._gcs.saved()
        return gcs_pb2.RegisterJobReply(job_id=job_id)

    @_rpc
    async def FinishJob(self, request: gcs_pb2.FinishJobRequest, context: _Ctx) -> gcs_pb2.FinishJobReply:
        if not self._state.finish_job(request.job_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, (
                f"FinishJob: job {request.job_id.hex()} is not registered with this GCS "
                "(was the head restarted without persistent storage?)"))
        self._gcs.placement.job_finished(request.job_id)
        return gcs_pb2.FinishJobReply()


class _Functions(_Servicer, gcs_pb2_grpc.FunctionsServicer):
    @_rpc
    async def ExportFunction(self, request: gcs_pb2.ExportFunctionRequest,
                             context: _Ctx) -> gcs_pb2.ExportFunctionReply:
        validate.check_function_row(request.function)
        existed = self._state.export_function(request.function)
        if not existed:
            await self._gcs.saved()
        return gcs_pb2.ExportFunctionReply(existed=existed)

    @_rpc
    async def GetFunction(self, request: gcs_pb2.GetFunctionRequest,
                          context: _Ctx) -> gcs_pb2.GetFunctionReply:
        row = self._state.get_function(request.function_id)
        return gcs_pb2.GetFunctionReply(function=row, found=row is not None)


class _Tables(_Servicer, gcs_pb2_grpc.TablesServicer):
    @_rpc
    async def ReportEvents(self, request: gcs_pb2.ReportEventsRequest,
                           context: _Ctx) -> gcs_pb2.ReportEventsReply:
        validate.check_events(request.task_events, request.objects)
        self._state.report_events(request.task_events, request.objects)
        return gcs_pb2.ReportEventsReply()

    @_rpc
    async def GetEntry(self, request: gcs_pb2.GetEntryRequest, context: _Ctx) -> gcs_pb2.GetEntryReply:
        value = self._state.get(request.table, request.key)
        return gcs_pb2.GetEntryReply(found=value is not None, value=value or b"")

    @_rpc
    async def ListTable(self, request: gcs_pb2.ListTableRequest, context: _Ctx) -> gcs_pb2.ListTableReply:
        if request.limit < 0:
            raise InvalidRequestError(f"limit must be >= 0 (0 means all rows), got {request.limit}")
        rows = self._state.items(request.table, request.limit)
        return gcs_pb2.ListTableReply(entries=[gcs_pb2.Entry(key=k, value=v) for k, v in rows])

    @_rpc
    async def Put(self, request: gcs_pb2.PutRequest, context: _Ctx) -> gcs_pb2.PutReply:
        written, existing = self._state.put(request.table, request.key, request.value, request.only_if_absent)
        if written:
            await self._gcs.saved()
        return gcs_pb2.PutReply(written=written, existing=existing)

    async def Subscribe(self, request: gcs_pb2.SubscribeRequest,
                        context: _Ctx) -> AsyncIterator[gcs_pb2.PubMessage]:
        """A snapshot of the named tables, one ``snapshot_done`` message, then every change."""
        unknown = [t for t in request.tables if t not in TABLES]
        if unknown or not request.tables:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, (
                f"Subscribe: name one or more of the tables {', '.join(TABLES)}; got {list(request.tables)}"))
        # Registering and reading the snapshot happen with no await in between, so every
        # change after the snapshot is in the queue and none before it is.
        sub = self._gcs.publisher.subscribe(request.tables)
        try:
            snapshot = [(t, k, v) for t in sorted(sub.tables) for k, v in self._state.items(t)]
            for table, key, value in snapshot:
                if sub.dropped is not None:
                    await context.abort(*sub.dropped)
                yield gcs_pb2.PubMessage(table=table, key=key, value=value, snapshot=True)
            yield gcs_pb2.PubMessage(snapshot_done=True)
            while True:
                msg = await sub.queue.get()
                if sub.dropped is not None:  # woken by drop(): the message carries nothing
                    await context.abort(*sub.dropped)
                yield msg
        finally:
            self._gcs.publisher.unsubscribe(sub)


class _Actors(_Servicer, gcs_pb2_grpc.ActorsServicer):
    @_rpc
    async def PutActor(self, request: gcs_pb2.PutActorRequest, context: _Ctx) -> gcs_pb2.PutActorReply:
        validate.check_actor_row(request.actor)
        self._state.put_actor(request.actor)
        await self._gcs.saved()
        return gcs_pb2.PutActorReply()

    @_rpc
    async def GetActor(self, request: gcs_pb2.GetActorRequest, context: _Ctx) -> gcs_pb2.GetActorReply:
        row = self._state.get_actor(request.actor_id)
        return gcs_pb2.GetActorReply(found=row is not None, actor=row)

    @_rpc
    async def ClaimActorName(self, request: gcs_pb2.ClaimActorNameRequest,
                             context: _Ctx) -> gcs_pb2.ClaimActorNameReply:
        validate.check_actor_name(request.namespace, request.name)
        claimed, existing = self._state.claim_actor_name(request.namespace, request.name, request.value)
        if claimed:
            await self._gcs.saved()
        return gcs_pb2.ClaimActorNameReply(claimed=claimed, existing=existing)

    @_rpc
    async def LookupActorName(self, request: gcs_pb2.LookupActorNameRequest,
                              context: _Ctx) -> gcs_pb2.LookupActorNameReply:
        value = self._state.lookup_actor_name(request.namespace, request.name)
        return gcs_pb2.LookupActorNameReply(found=value is not None, value=value or b"")

    @_rpc
    async def ReleaseActorName(self, request: gcs_pb2.ReleaseActorNameRequest,
                               context: _Ctx) -> gcs_pb2.ReleaseActorNameReply:
        validate.check_actor_name(request.namespace, request.name)
        self._state.release_actor_name(request.namespace, request.name)
        return gcs_pb2.ReleaseActorNameReply()


class _Schedulers(_Servicer, gcs_pb2_grpc.SchedulersServicer):
    @_rpc
    async def RegisterScheduler(self, request: gcs_pb2.RegisterSchedulerRequest,
                                context: _Ctx) -> gcs_pb2.RegisterSchedulerReply:
        validate.check_scheduler(request.name, request.address)
        self._state.register_scheduler(request.name, request.address)
        return gcs_pb2.RegisterSchedulerReply()

    @_rpc
    async def DeregisterScheduler(self, request: gcs_pb2.DeregisterSchedulerRequest,
                                  context: _Ctx) -> gcs_pb2.DeregisterSchedulerReply:
        self._state.deregister_scheduler(request.name)
        return gcs_pb2.DeregisterSchedulerReply()

    @_rpc
    async def ListSchedulers(self, request: gcs_pb2.ListSchedulersRequest,
                             context: _Ctx) -> gcs_pb2.ListSchedulersReply:
        return gcs_pb2.ListSchedulersReply(addresses=self._state.schedulers())


class _PlacementGroups(_Servicer, gcs_pb2_grpc.PlacementGroupsServicer):
    @_rpc
    async def CreatePlacementGroup(self, request: gcs_pb2.CreatePlacementGroupRequest,
                                   context: _Ctx) -> gcs_pb2.CreatePlacementGroupReply:
        group_id = self._gcs.placement.create(request.group)
        await self._gcs.saved()
        return gcs_pb2.CreatePlacementGroupReply(placement_group_id=group_id)

    @_rpc
    async def RemovePlacementGroup(self, request: gcs_pb2.RemovePlacementGroupRequest,
                                   context: _Ctx) -> gcs_pb2.RemovePlacementGroupReply:
        return gcs_pb2.RemovePlacementGroupReply(
            found=await self._gcs.placement.remove(request.placement_group_id))

    @_rpc
    async def WaitPlacementGroup(self, request: gcs_pb2.WaitPlacementGroupRequest,
                                 context: _Ctx) -> gcs_pb2.WaitPlacementGroupReply:
        if not request.timeout_s >= 0:
            raise InvalidRequestError(f"timeout_s must be >= 0, got {request.timeout_s}")
        ready, row = await self._gcs.placement.wait(request.placement_group_id, request.timeout_s)
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, (
                f"WaitPlacementGroup: placement group {request.placement_group_id.hex()} is unknown"))
        return gcs_pb2.WaitPlacementGroupReply(ready=ready, group=row)

    @_rpc
    async def GetPlacementGroup(self, request: gcs_pb2.GetPlacementGroupRequest,
                                context: _Ctx) -> gcs_pb2.GetPlacementGroupReply:
        if request.placement_group_id:
            row = self._state.get_placement_group(request.placement_group_id)
        else:
            row = self._state.find_placement_group(request.namespace, request.name)
        return gcs_pb2.GetPlacementGroupReply(found=row is not None, group=row)


class _Admin(_Servicer, gcs_pb2_grpc.AdminServicer):
    @_rpc
    async def Ping(self, request: gcs_pb2.PingRequest, context: _Ctx) -> gcs_pb2.PingReply:
        return gcs_pb2.PingReply(session_dir=self._gcs.session_dir, pid=os.getpid(),
                                 num_shards=self._state.num_shards, cluster_id=self._gcs.cluster_id,
                                 storage=self._gcs.storage)

    @_rpc
    async def Shutdown(self, request: gcs_pb2.AdminShutdownRequest,
                       context: _Ctx) -> gcs_pb2.AdminShutdownReply:
        logger.info("shutdown requested by %s", context.peer())
        self._gcs.shutdown_requested.set()
        return gcs_pb2.AdminShutdownReply()
