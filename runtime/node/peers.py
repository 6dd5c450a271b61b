"""The node's conversations with other processes of the cluster: peers and schedulers.

Carries out the multi-node actions of the state (``Spill`` through a global scheduler,
``Pull`` an object, ``ReportHome`` results, ``FreeRemote`` copies, ``ForwardLog`` printed
lines) and keeps the state's view of the other nodes and of the schedulers current from
the GCS. What comes back (a placement, pulled bytes, a peer joining or dying) is fed to
the state through ``apply``, which then carries out the state's new actions: ``Peers``
never sees the manager, only the services named in its constructor.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, Protocol

import grpc

from runtime import _ids
from runtime.config import Settings
from runtime.exceptions import ConnectionLostError
from runtime.gcs.fencing import fenced_error
from runtime.node.actions import (
    CancelRemote,
    DropPulled,
    ForwardCalls,
    ForwardLog,
    FreeRemote,
    KillRemoteActor,
    Pull,
    ReportHome,
    Spill,
    SpillReason,
)
from runtime.node.lanes import Lane
from runtime.node.pulls import fetch_object
from runtime.protocol import common_pb2, gcs_pb2, node_pb2, node_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from runtime.rpc.channel import connect
from runtime.rpc.errors import translate

logger = logging.getLogger(__name__)

NODE = "node manager"
SCHEDULER = "global scheduler"

#: Results sent home in one ``ReportResultsBatch`` at most.
_REPORT_BATCH = 256
#: Answers that trying again cannot change: a report that gets one is dropped.
_REFUSED_FOR_GOOD = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
                               grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED})


class PeerEvents(Protocol):
    """The state's events that answers from peers and the GCS become."""

    def spilled(self, task_id: bytes, node_id: bytes, scheduler: str, reason: SpillReason,
                why: str = "", attempt: int | None = None) -> None: ...
    def spill_failed(self, task_id: bytes) -> None: ...
    def unschedulable(self, task_id: bytes, why: str) -> None: ...
    def calls_delivered(self, actor_id: bytes, accepted: bool) -> None: ...
    def calls_undelivered(self, actor_id: bytes) -> None: ...
    def actor_row(self, row: gcs_pb2.ActorRow) -> None: ...
    def pulled(self, data: common_pb2.ObjectData) -> None: ...
    def pull_failed(self, oid: bytes, why: str) -> None: ...
    def peer_alive(self, node_id: bytes, load: common_pb2.NodeLoad) -> None: ...
    def peer_died(self, node_id: bytes) -> None: ...
    def set_schedulers(self, available: bool) -> None: ...


#: Feed one event to the state, then carry out the actions it made.
Apply = Callable[[Callable[[PeerEvents], None]], None]


class ClusterDirectory(Protocol):
    """What peers read from the GCS (``runtime.gcs.client.GcsClient`` has it)."""

    def subscribe(self, tables: Iterable[str]) -> AsyncIterator[gcs_pb2.PubMessage]: ...
    async def list_schedulers(self) -> list[str]: ...
    async def get_actor(self, actor_id: bytes) -> gcs_pb2.ActorRow | None: ...


class Channels:
    """One gRPC channel per peer address, opened on first use."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = connect(address)
        return ch

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            await ch.close()


def _node_rpc(channel: grpc.aio.Channel) -> Any:
    """The NodeManager service of another node, over ``channel`` (the generated gRPC client
    classes carry no type hints, hence ``Any``)."""
    return node_pb2_grpc.NodeManagerStub(channel)  # type: ignore[no-untyped-call]


def _scheduler_rpc(channel: grpc.aio.Channel) -> Any:
    """The GlobalScheduler service of a replica, over ``channel``."""
    return scheduler_pb2_grpc.GlobalSchedulerStub(channel)  # type: ignore[no-untyped-call]


class Peers:
    """Channels to other nodes and to the global schedulers, and what goes over them."""

    def __init__(self, *, node_id: bytes, address: str, metadata: tuple[tuple[str, str], ...],
                 settings: Settings, gcs: ClusterDirectory, path_for: Callable[[bytes], str],
                 apply: Apply, channels: Channels | None = None,
                 declared_dead: Callable[[str], None] | None = None) -> None:
        self.node_id = node_id
        #: Called (with why) when the nodes table shows this very node dead: it is fenced.
        self._declared_dead = declared_dead
        self.address = address
        self._md = metadata
        self._settings = settings
        self._gcs = gcs
        self._path_for = path_for
        self._apply = apply
        self.channels = channels if channels is not None else Channels()
        #: Addresses of the live peers, by node id.
        self.addresses: dict[bytes, str] = {}
        #: Addresses of the live global scheduler replicas.
        self.schedulers: list[str] = []
        self._schedulers_known: bool | None = None
        #: Addresses of peers the GCS declared dead (reports to them stop).
        self.dead_addresses: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._free: dict[bytes, list[bytes]] = {}
        #: Results going home, per home address: sent in batches by a few workers.
        self._reporting: dict[str, Lane[node_pb2.ReportResultsRequest]] = {}
        #: Spills limited in number (not those only a scheduler can place).
        self._scheduling: Lane[Spill] = Lane(self._spill_one, width=settings.max_spills_in_flight)

    @property
    def _retry_s(self) -> float:
        return self._settings.heartbeat_ms / 1000.0

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def drained(self) -> None:
        """Wait until everything sent so far got its answer (for tests and shutdown)."""
        while True:
            lanes: list[Lane[Any]] = [self._scheduling, *self._reporting.values()]
            if not self._tasks and not any(lane.busy for lane in lanes):
                return
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            for lane in lanes:
                await lane.drained()

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self._scheduling.cancel()
        for lane in self._reporting.values():
            lane.cancel()
        await self.channels.close()

    # ---- outlets of the dispatch table ---------------------------------------------

    def spill(self, action: Spill) -> None:
        if action.reason.needs_scheduler:
            self._spawn(self._spill(action))  # it may wait long for a scheduler: not in the lane
        else:
            self._scheduling.put(action)

    def pull(self, action: Pull) -> None:
        self._spawn(self._pull(action.object_id, action.node_id))

    def report_home(self, action: ReportHome) -> None:
        address = action.address
        lane = self._reporting.get(address)
        if lane is None:
            async def report(reqs: list[node_pb2.ReportResultsRequest]) -> None:
                await self._report(address, reqs)
            lane = self._reporting[address] = Lane(report, width=self._settings.max_reports_in_flight,
                                                   batch=_REPORT_BATCH)
        lane.put(action.request)

    def free_remote(self, action: FreeRemote) -> None:
        first = action.node_id not in self._free
        self._free.setdefault(action.node_id, []).append(action.object_id)
        if first:
            self._spawn(self._send_frees(action.node_id))

    def forward_log(self, action: ForwardLog) -> None:
        self._spawn(self._forward_log(action.address, action.lines))

    def forward_calls(self, action: ForwardCalls) -> None:
        self._spawn(self._forward_calls(action))

    def kill_remote_actor(self, action: KillRemoteActor) -> None:
        self._spawn(self._kill_remote_actor(action))

    def cancel_remote(self, action: CancelRemote) -> None:
        self._spawn(self._cancel_remote(action))

    def drop_pulled(self, action: DropPulled) -> None:
        self._spawn(self._drop_pulled(action))

    # ---- the calls -----------------------------------------------------------------

    async def _spill(self, action: Spill) -> None:
        """Ask the replicas, in random order, to place the task; none placing it, run it
        here (``spill_failed``), or keep asking when it can never run here.

        Every call has a deadline: a call that never ends would keep its task SPILLED
        forever. Spills for a busy node are at most ``max_spills_in_flight`` at once (the
        ``_scheduling`` lane: a burst of thousands overflows the replicas' gRPC backlog);
        those only a scheduler can place are not limited, since a replica may hold them until
        a node fits them.
        """
        task_id, req = action.task_id, action.request
        req.home_address = self.address
        timeout = self._settings.rpc_timeout_s
        while True:
            replicas = self._replicas_for(action.reason)
            for address in replicas:
                rpc = _scheduler_rpc(self.channels.get(address))
                try:
                    reply = await rpc.Schedule(req, metadata=self._md, timeout=timeout)
                except grpc.aio.AioRpcError as e:
                    logger.info("task %s not placed by replica %s (%s); trying another",
                                _ids.short(task_id), address, translate(e, SCHEDULER, address))
                    continue
                self._placed(action, reply)
                return
            if not action.reason.needs_scheduler:
                self._apply(lambda s: s.spill_failed(task_id))
                return
            # Only a scheduler can ever place it: wait for one to come back.
            await asyncio.sleep(self._retry_s)

    def _replicas_for(self, reason: SpillReason) -> list[str]:
        """The replicas to ask, in order: at random (to share the load), except for
        ``"SPREAD"`` tasks, which all go to one replica first (chosen by this node's id), so
        that its charges spread a burst of them over the nodes."""
        replicas = list(self.schedulers)
        if reason == SpillReason.SPREAD and replicas:
            start = int.from_bytes(self.node_id[:4], "big") % len(replicas)
            return replicas[start:] + replicas[:start]
        random.shuffle(replicas)
        return replicas

    def _placed(self, action: Spill, reply: scheduler_pb2.ScheduleReply) -> None:
        task_id = action.task_id
        if reply.unschedulable:
            why = reply.unschedulable
            self._apply(lambda s: s.unschedulable(task_id, why))
        else:
            node_id, scheduler, why = reply.node_id, reply.scheduler, reply.why
            attempt = action.request.spec.attempt
            self._apply(lambda s: s.spilled(task_id, node_id, scheduler, action.reason, why, attempt))

    async def _pull(self, oid: bytes, node_id: bytes) -> None:
        address = self.addresses.get(node_id)
        if address is None:
            why = f"node {_ids.short(node_id)} is not known or not alive"
            self._apply(lambda s: s.pull_failed(oid, why))
            return
        try:
            data = await fetch_object(_node_rpc(self.channels.get(address)), oid, self._path_for(oid),
                                      self.node_id, self._md)
        except (grpc.aio.AioRpcError, OSError) as e:
            err = translate(e, NODE, address) if isinstance(e, grpc.aio.AioRpcError) else e
            reason = str(err) or type(err).__name__
            self._apply(lambda s: s.pull_failed(oid, reason))
            return
        self._apply(lambda s: s.pulled(data))

    async def _spill_one(self, actions: list[Spill]) -> None:
        for action in actions:
            await self._spill(action)

    async def _report(self, address: str, reqs: list[node_pb2.ReportResultsRequest]) -> None:
        """Send tasks' results to their home (one ``ReportResultsBatch``) until it takes them,
        refuses them for good, or is declared dead.

        The home keeps a task until its report arrives (nothing else tells it the task
        ended), so a report is never dropped while the home lives: failures are retried
        with a backoff capped at ``report_backoff_max_s``, a warning after
        ``report_retries`` of them.
        """
        for req in reqs:
            req.node_address = self.address
        batch = node_pb2.ReportResultsBatchRequest(reports=reqs)
        settings = self._settings
        first = _ids.short(reqs[0].task_id)
        failures = 0
        while address not in self.dead_addresses:
            rpc = _node_rpc(self.channels.get(address))
            try:
                await rpc.ReportResultsBatch(batch, metadata=self._md, timeout=settings.rpc_timeout_s)
                return
            except grpc.aio.AioRpcError as e:
                if e.code() in _REFUSED_FOR_GOOD:
                    logger.warning("results of %d task(s) (%s, ...) not reported: their home refused "
                                   "them: %s", len(reqs), first, translate(e, NODE, address))
                    return
                failures += 1
                log = logger.warning if failures == settings.report_retries else logger.info
                log("reporting %d task(s) (%s, ...) to their home failed %d time(s), trying again: %s",
                    len(reqs), first, failures, translate(e, NODE, address))
            backoff = min(settings.report_backoff_s * 2 ** min(failures - 1, 16),
                          settings.report_backoff_max_s)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
        logger.warning("results of %d task(s) (%s, ...) not reported: their home at %s died",
                       len(reqs), first, address)

    async def _send_frees(self, node_id: bytes) -> None:
        await asyncio.sleep(0)  # let a burst of frees gather
        ids = self._free.pop(node_id, [])
        address = self.addresses.get(node_id)
        if not ids or address is None:
            return
        rpc = _node_rpc(self.channels.get(address))
        try:
            await rpc.FreeObjects(node_pb2.FreeObjectsRequest(object_ids=ids, node_id=self.node_id),
                                  metadata=self._md,
                                  timeout=self._settings.rpc_timeout_s)
        except grpc.aio.AioRpcError as e:
            logger.info("freeing %d objects failed: %s", len(ids), translate(e, NODE, address))

    async def _forward_log(self, address: str, lines: node_pb2.LogLines) -> None:
        rpc = _node_rpc(self.channels.get(address))
        try:
            await rpc.ForwardLogs(lines, metadata=self._md, timeout=self._settings.rpc_timeout_s)
        except grpc.aio.AioRpcError as e:
            logger.info("forwarding output failed: %s", translate(e, NODE, address))

    async def _forward_calls(self, action: ForwardCalls) -> None:
        """Send a batch of actor calls to the actor's node; its answer (or the failure to
        reach it, after a pause) goes back to the state, which sends the next batch."""
        actor_id = action.request.actor_id
        address = self.addresses.get(action.node_id)
        if address is None:
            logger.info("actor %s: node %s is not known (yet); its calls wait", _ids.short(actor_id),
                        _ids.short(action.node_id))
            await asyncio.sleep(self._retry_s)
            self._apply(lambda s: s.calls_undelivered(actor_id))
            return
        req = action.request
        for call in req.calls:
            call.home_address = self.address
        rpc = _node_rpc(self.channels.get(address))
        try:
            reply = await rpc.ForwardActorCalls(req, metadata=self._md, timeout=self._settings.rpc_timeout_s)
        except grpc.aio.AioRpcError as e:
            logger.info("forwarding %d call(s) of actor %s failed (%s); trying again", len(req.calls),
                        _ids.short(actor_id), translate(e, NODE, address))
            await asyncio.sleep(self._retry_s)
            self._apply(lambda s: s.calls_undelivered(actor_id))
            return
        accepted = reply.accepted
        self._apply(lambda s: s.calls_delivered(actor_id, accepted))
        if not accepted:
            # Our idea of where it lives is stale (it moved on, or was not there yet): ask
            # the GCS again after a pause; its row sends the calls on.
            logger.info("node %s does not hold actor %s (%s); looking it up again",
                        _ids.short(action.node_id), _ids.short(actor_id), reply.why_not)
            await asyncio.sleep(self._retry_s)
            await self._look_up_actor(actor_id)

    async def _look_up_actor(self, actor_id: bytes) -> None:
        try:
            row = await self._gcs.get_actor(actor_id)
        except Exception as e:  # noqa: BLE001 - the GCS may be away: the subscription will tell
            logger.info("looking up actor %s failed: %s", _ids.short(actor_id), e)
            return
        if row is not None:
            self.actor_row(row)

    async def _tell(self, node_id: bytes, what: str,
                    call: Callable[[Any], Coroutine[Any, Any, Any]]) -> None:
        """Make ``call`` (given the node's client) to node ``node_id`` about ``what``; a node not
        known (gone) or a failed call is only logged: these calls have no answer to wait for."""
        address = self.addresses.get(node_id)
        if address is None:
            logger.info("cannot reach node %s (%s): it is not known", _ids.short(node_id), what)
            return
        try:
            await call(_node_rpc(self.channels.get(address)))
        except grpc.aio.AioRpcError as e:
            logger.warning("%s on node %s failed: %s", what, _ids.short(node_id),
                           translate(e, NODE, address))

    async def _kill_remote_actor(self, action: KillRemoteActor) -> None:
        req = node_pb2.KillActor(actor_id=action.actor_id, no_restart=action.no_restart,
                                graceful=action.graceful)
        await self._tell(action.node_id, f"killing actor {_ids.short(action.actor_id)}",
                         lambda rpc: rpc.KillHostedActor(req, metadata=self._md,
                                                         timeout=self._settings.rpc_timeout_s))

    async def _cancel_remote(self, action: CancelRemote) -> None:
        req = node_pb2.CancelTasksRequest(home_node_id=self.node_id)
        req.tasks.add(task_id=action.task_id, force=action.force, recursive=action.recursive)
        await self._tell(action.node_id, f"cancelling task {_ids.short(action.task_id)}",
                         lambda rpc: rpc.CancelTasks(req, metadata=self._md,
                                                     timeout=self._settings.rpc_timeout_s))

    async def _drop_pulled(self, action: DropPulled) -> None:
        req = node_pb2.DropObjectsRequest(objects=[action.data], node_id=self.node_id)
        await self._tell(action.node_id, f"dropping object {_ids.short(action.data.object_id)}",
                         lambda rpc: rpc.DropObjects(req, metadata=self._md,
                                                     timeout=self._settings.rpc_timeout_s))

    # ---- keeping the view of the cluster current -------------------------------------

    async def watch_cluster(self) -> None:
        """Follow the GCS nodes and actors tables: peers joining, their loads, their deaths;
        where actors live.

        Through a GCS outage the view keeps its last picture (peers stay reachable, their
        deaths are learned once the GCS is back and declares them); a new subscription
        (which waits for the GCS to come back) starts from a fresh snapshot, after a short
        backoff. A GCS that came back as another cluster ends the watch (the node leaves).
        """
        backoff = self._retry_s
        while True:
            try:
                async for msg in self._gcs.subscribe(["nodes", "actors"]):
                    if msg.snapshot_done:
                        backoff = self._retry_s  # healthy again
                    if not msg.value:
                        continue
                    if msg.table == "nodes":
                        self.node_row(gcs_pb2.NodeRow.FromString(msg.value))
                    elif msg.table == "actors":
                        self.actor_row(gcs_pb2.ActorRow.FromString(msg.value))
            except asyncio.CancelledError:
                raise
            except ConnectionLostError as e:
                if getattr(e, "cluster_restarted", False):
                    return  # the manager heard of it (``on_new_cluster``) and stops the node
                logger.info("node table subscription ended (%s); subscribing again", e)
            # The watch must outlive any failure (GCS gone, a bad row): log, resubscribe.
            except Exception as e:  # noqa: BLE001
                logger.info("node table subscription ended (%s); subscribing again", e)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, max(self._retry_s, self._settings.gcs_retry_max_s))

    def node_row(self, row: gcs_pb2.NodeRow) -> None:
        """One row of the nodes table: a peer alive (with its totals) or dead; this node's own
        row dead means the GCS declared it dead (it woke from a pause): it is fenced."""
        node_id = row.node_id
        if node_id == self.node_id:
            if not row.alive and self._declared_dead is not None:
                self._declared_dead(str(fenced_error(row)))
            return
        if row.alive:
            self.addresses[node_id] = row.address
            self.dead_addresses.discard(row.address)
            load = row.load
            self._apply(lambda s: s.peer_alive(node_id, load))
        elif node_id in self.addresses:
            del self.addresses[node_id]
            self.dead_addresses.add(row.address)
            self._apply(lambda s: s.peer_died(node_id))

    def actor_row(self, row: gcs_pb2.ActorRow) -> None:
        """One row of the actors table: where an actor lives, in what state."""
        self._apply(lambda s: s.actor_row(row))

    async def refresh_schedulers(self) -> None:
        """Read the live global scheduler replicas; tell the state when there are some or none."""
        found = sorted(await self._gcs.list_schedulers())
        self.schedulers = found
        available = bool(found)
        if available != self._schedulers_known:
            self._schedulers_known = available
            self._apply(lambda s: s.set_schedulers(available))
