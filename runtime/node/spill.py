"""Bottom-up scheduling across nodes: spilling, forwarded tasks, infeasible tasks. Pure, a
part of the local scheduler.

A task runs on the node it was submitted to unless one of these holds (``reason``):

- the node can never hold it (``NEVER_FITS``);
- it cannot start now, a whole round of tasks like it is queued here already, and a
  peer's last row shows room for it (``PEER_HAS_ROOM``);
- it cannot start now, the local queue is at least ``spill_threshold`` long, and a peer
  looks at least one round of tasks less busy than this node (``QUEUE_FULL``): when every
  node is busy, the node keeps what it will run soon and spills only the excess;
- it is an actor's creation that cannot start here now while a peer looks able to
  (``ACTOR_BUSY``): actors hold their resources for their whole life, so waiting here
  could mean waiting forever;
- its strategy is ``"SPREAD"`` or a node affinity to another node.

Each task spilled is charged to the peer it was meant for until that peer's next
heartbeat row, so a burst is shared out instead of all sent to the peer that looked free.

Then the node *spills* it to a global scheduler, which places it on a node (``ForwardTask``)
or back on this one when that is the best place. The submitting node stays the task's
*home*: it keeps the owner's references, gets the results back (``ReportResults``), and
re-runs the task if the node it went to dies. A task placed by a scheduler is not spilled
again for being busy (no ping-pong), and is moved at most ``max_spills`` times. A task no
node can hold waits here, *infeasible*, until a node or a scheduler appears.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from runtime import _ids
from runtime.exceptions import ActorUnschedulableError, NodeDiedError, TaskUnschedulableError
from runtime.node.actions import Action, FreeRemote, ReportHome, Spill, SpillReason
from runtime.node.actors import ActorTable
from runtime.node.objects import ObjectTable
from runtime.node.peer_loads import Peer, PeerLoads, rounds
from runtime.node.resources import Resources
from runtime.node.tasks import Phase, Task, TaskHost
from runtime.protocol import common_pb2, node_pb2, scheduler_pb2
from runtime.protocol.resources import fits
from runtime.protocol.states import TaskState

_SPREAD, _AFFINITY = "SPREAD", "NODE_AFFINITY"
#: Actor calls forwarded here that a node remembers having run (a lost answer makes the
#: caller's node send a batch again, seconds later at most).
_ENDED_CALLS = 65536


@dataclass(slots=True)
class Home:
    address: str
    node_id: bytes


class Spilling:
    """Where tasks go when they do not stay here, and tasks that came from elsewhere."""

    __slots__ = ("_actors", "_emit", "_ended_calls", "_handed_back", "_host", "_node_id",
                 "_objects", "_received", "_resources", "_spilled", "dead_peers", "forwarded",
                 "has_schedulers", "infeasible", "max_actor_spills", "max_spills", "peers",
                 "spill_threshold", "spilled_to", "waiting_creations")

    def __init__(self, node_id: bytes, host: TaskHost, objects: ObjectTable, resources: Resources,
                 actors: ActorTable, emit: Callable[[Action], None], *, spill_threshold: int,
                 max_spills: int, max_actor_spills: int) -> None:
        self._node_id = node_id
        self._host = host
        self._objects = objects
        self._resources = resources
        self._actors = actors
        self._emit = emit
        #: Tasks sent to a global scheduler; tasks placed here by one.
        self._spilled = 0
        self._received = 0
        #: Queue length above which tasks that cannot start now spill to other nodes.
        self.spill_threshold = spill_threshold
        self.max_spills = max_spills
        self.max_actor_spills = max_actor_spills
        #: Actors' creations queued here that cannot start now: they move on when a peer's
        #: row shows room for them.
        self.waiting_creations: dict[bytes, Task] = {}
        #: Other live nodes, as their last rows showed them.
        self.peers = PeerLoads()
        #: Actor calls forwarded here that ended (the latest ``_ENDED_CALLS``).
        self._ended_calls: OrderedDict[bytes, None] = OrderedDict()
        self.has_schedulers = False
        #: Tasks run here for another node: task id -> that node.
        self.forwarded: dict[bytes, Home] = {}
        #: Our tasks a scheduler placed elsewhere: task id -> node id.
        self.spilled_to: dict[bytes, bytes] = {}
        self.dead_peers: set[bytes] = set()
        #: Tasks no node can hold (yet).
        self.infeasible: dict[bytes, Task] = {}
        #: Tasks that were to run here for another node, given back (their inputs were
        #: lost here) and not yet reported: task id -> the lost inputs.
        self._handed_back: dict[bytes, list[bytes]] = {}

    def counters(self) -> dict[str, int]:
        """This part's counters, for ``statistics()`` and the node's load."""
        return {"spilled": self._spilled, "received": self._received}

    # ---- deciding ------------------------------------------------------------------

    def fits_nowhere(self, need: Mapping[str, float]) -> bool:
        """True when neither this node nor any known peer could ever hold ``need``."""
        return (not self._resources.ever_fits(need)
                and not self.peers.any_fits(need))

    def park(self, task: Task) -> None:
        """Keep ``task`` aside until a node that fits it joins."""
        task.phase = Phase.INFEASIBLE
        self.infeasible[task.spec.task_id] = task

    def park_unplaceable(self, task: Task) -> bool:
        """An infeasible ``task`` that no scheduler can place elsewhere (none is known) is
        parked: True."""
        if self.has_schedulers:
            return False
        self.park(task)
        return True

    def reason(self, task: Task) -> SpillReason | None:
        """Why ``task`` should leave this node, or None when it stays (see the module docstring).

        An actor's creation that stays is watched: when it has not started by the time a
        peer's row shows room for it, it moves there (``peer_alive``)."""
        why = self._reason(task)
        if task.spec.actor_creation:
            if why is None:
                self.waiting_creations[task.spec.task_id] = task
            else:
                self.waiting_creations.pop(task.spec.task_id, None)
        return why

    def _reason(self, task: Task) -> SpillReason | None:
        spec = task.spec
        if spec.actor_id and not spec.actor_creation:
            return None  # an actor's calls go to the actor
        strategy = spec.strategy
        first = not spec.spill_count
        if strategy.kind == _AFFINITY and strategy.node_id != self._node_id and (
                self.has_schedulers or not strategy.soft):
            return SpillReason.AFFINITY if first else None  # a hard one waits for a scheduler
        if not self.has_schedulers:
            return None  # nowhere to go
        if not self._resources.ever_fits(task.resources):
            return SpillReason.NEVER_FITS
        if not self.peers or strategy.kind == _AFFINITY:
            return None  # alone, or bound here
        need = task.resources
        if spec.actor_creation and not self._resources.can_run(need):
            # An actor holds its resources for life: waiting here may mean waiting forever,
            # so even one placed here moves on (within max_actor_spills) when a peer has room.
            peer = self.peers.can_start(need)
            if peer is None or spec.spill_count >= self.max_actor_spills:
                return None
            self.peers.charge(peer, task)
            return SpillReason.ACTOR_BUSY
        if not first:
            return None  # placed here by a scheduler: no ping-pong of busy nodes
        if strategy.kind == _SPREAD:
            return SpillReason.SPREAD
        if self._resources.can_run(need):
            return None
        queued = self._host.queue_length()
        if queued and rounds(queued, need, self._resources.total) >= 1:
            peer = self.peers.can_start(need)
            if peer is not None:
                self.peers.charge(peer, task)
                return SpillReason.PEER_HAS_ROOM
        if queued >= self.spill_threshold:
            peer = self.peers.less_busy(need, self._host.queue_length(), self._resources.total)
            if peer is not None:
                self.peers.charge(peer, task)
                return SpillReason.QUEUE_FULL
        return None

    def spill(self, task: Task, reason: SpillReason) -> None:
        spec = task.spec
        task.phase = Phase.SPILLED
        req = scheduler_pb2.ScheduleRequest(from_node_id=self._node_id, reason=reason)
        req.spec.CopyFrom(spec)
        req.spec.spill_count = spec.spill_count + 1
        self._objects.describe_inputs(spec, req.args, req.inputs)
        load, snapshot = req.home_load, self._resources.snapshot()
        load.total.update(snapshot["total"])
        load.available.update({k: max(v, 0.0) for k, v in snapshot["available"].items()})
        load.queue_length = self._host.queue_length()
        self._spilled += 1
        self._emit(Spill(spec.task_id, req, reason))

    def spilled(self, task_id: bytes, node_id: bytes, scheduler: str, reason: str,
                why: str = "", attempt: int | None = None) -> None:
        """A global scheduler placed attempt ``attempt`` of our task on ``node_id`` (``why``:
        its reason)."""
        self.peers.answered(task_id)
        task = self._host.task(task_id)
        if task is None or task.phase != Phase.SPILLED or attempt not in (None, task.spec.attempt):
            return  # done already, placed back here by a ForwardTask that came first, or an old attempt
        if node_id == self._node_id:
            self._place_back(task, scheduler, why)
            return
        self.spilled_to[task_id] = node_id
        self._objects.lend(node_id, task.spec)
        task.worker_id = b""
        detail = f"{reason}; placed on node {_ids.short(node_id)} by {scheduler}"
        if why:
            detail += f": {why}"
        ev = self._host.event(task, TaskState.SPILLED, detail=detail)
        ev.target_node_id, ev.scheduler = node_id, scheduler
        if task.spec.actor_creation:
            self._actors.creation_placed(task.spec.actor_id, node_id)
        if node_id in self.dead_peers:
            # The node died before the scheduler's answer reached us: run it again now.
            self.peer_died(node_id)

    def _place_back(self, task: Task, scheduler: str, why: str) -> None:
        """A scheduler found this node, which spilled the task, its best place: run it here,
        never to be spilled for being busy again."""
        host = self._host
        task.spec.spill_count = max(task.spec.spill_count, 1)
        task.phase = Phase.WAITING
        self._received += 1
        detail = f"placed back here by {scheduler or 'a global scheduler'}"
        if why:
            detail += f": {why}"
        host.event(task, TaskState.SCHEDULED, detail=detail)
        host.make_ready(task)
        host.schedule()

    def unschedulable(self, task_id: bytes, why: str) -> None:
        """No node can ever take our spilled task: it fails (an actor's creation: the actor dies)."""
        self.peers.answered(task_id)
        task = self._host.task(task_id)
        if task is None or task.phase != Phase.SPILLED:
            return
        spec = task.spec
        if spec.actor_creation:
            err: Exception = ActorUnschedulableError(
                f"The actor {spec.name.removesuffix('.__init__')} cannot be scheduled: {why}.",
                actor_id=spec.actor_id.hex())
            self._actors.unschedulable(spec.actor_id, str(err))
        else:
            err = TaskUnschedulableError(f"Task {spec.name}() cannot be scheduled: {why}.",
                                         task_id=spec.task_id.hex())
        self._host.fail(task, err)

    def spill_failed(self, task_id: bytes) -> None:
        """No global scheduler took the task: run it here if it can ever fit, else wait."""
        self.peers.answered(task_id)
        task = self._host.task(task_id)
        if task is None or task.phase != Phase.SPILLED:
            return
        if self._resources.ever_fits(task.resources):
            task.spec.spill_count = self.max_spills  # do not try again
            self._host.make_ready(task)
            self._host.schedule()
        else:
            self.park(task)

    def _retry_infeasible(self) -> None:
        """Give tasks parked as infeasible another chance (a node or scheduler appeared)."""
        for task in list(self.infeasible.values()):
            if self.has_schedulers:
                del self.infeasible[task.spec.task_id]
                task.phase = Phase.WAITING
                self._host.make_ready(task)

    # ---- the cluster around ----------------------------------------------------------

    def peer_alive(self, node_id: bytes, load: common_pb2.NodeLoad) -> None:
        """A peer's row: alive, with its resources and queue (it replaces our guesses). A node
        declared dead stays dead: the GCS fences its id (it rejoins under a new one), so a
        row alive under it is stale and ignored."""
        if node_id in self.dead_peers:
            return
        new = node_id not in self.peers
        self._actors.node_alive(node_id)
        peer = self.peers.row(node_id, load)
        if new:
            self._retry_infeasible()
        if self.waiting_creations and self.has_schedulers:
            self._move_creations(peer)

    def _move_creations(self, peer: Peer) -> None:
        """Actors' creations still waiting here go where ``peer``'s row shows room for them."""
        for task_id, task in list(self.waiting_creations.items()):
            if task.phase != Phase.READY or self._resources.can_run(task.resources):
                if task.phase != Phase.READY:
                    del self.waiting_creations[task_id]
                continue
            if task.spec.spill_count < self.max_actor_spills and fits(task.resources, peer.available):
                del self.waiting_creations[task_id]
                self.peers.charge(peer, task)
                self.spill(task, SpillReason.ACTOR_BUSY)  # its ready-queue entry is dropped lazily

    def set_schedulers(self, available: bool) -> None:
        had = self.has_schedulers
        self.has_schedulers = available
        if available and not had:
            self._retry_infeasible()

    def peer_died(self, node_id: bytes) -> None:
        """Re-run the tasks we had sent there; calls of actors that lived there wait for
        the actor's restart, and actors we created that lived there restart or die; objects
        only it held are lost."""
        self.peers.remove(node_id)
        self.dead_peers.add(node_id)
        host = self._host
        for task_id, where in list(self.spilled_to.items()):
            if where != node_id:
                continue
            del self.spilled_to[task_id]
            task = host.task(task_id)
            if task is None:
                continue
            spec = task.spec
            if spec.actor_creation:  # the actor's restarts decide (``node_died`` below)
                host.finish(task, [], TaskState.FAILED, f"node {_ids.short(node_id)} died")
            elif not task.cancelled and (spec.max_retries < 0 or spec.attempt < spec.max_retries):
                spec.attempt += 1
                host.event(task, TaskState.RETRYING, detail=f"node {_ids.short(node_id)} died")
                task.phase = Phase.WAITING
                host.make_ready(task)
            else:
                host.fail(task, NodeDiedError(
                    f"{spec.name}() (task {_ids.short(task_id)}) was running on node "
                    f"{_ids.short(node_id)}, which died; max_retries={spec.max_retries} spent.",
                    task_id=task_id.hex()))
        for task_id, home in list(self.forwarded.items()):
            task = host.task(task_id)
            if home.node_id == node_id and task is not None and not task.spec.actor_id:
                host.cancel(task_id, True, True)  # its owner went with its node
        self._actors.node_died(node_id)
        why = f"node {_ids.short(node_id)}, which held it, died"
        for oid in self._objects.remote_on(node_id):
            self.hand_back(oid, why)
            host.object_lost(oid, why, node_id)
        self._objects.drop_holds(node_id)
        host.schedule()

    # ---- running tasks for other nodes ---------------------------------------------

    def is_forwarded(self, task_id: bytes) -> bool:
        return task_id in self.forwarded

    def task_over(self, task_id: bytes, actor_call: bool = False) -> Home | None:
        """Task ``task_id`` ended: its home node when it ran here for another one."""
        self.infeasible.pop(task_id, None)
        home = self.forwarded.pop(task_id, None)
        if home is not None and actor_call:  # a batch sent again must not run it twice
            ended = self._ended_calls
            ended[task_id] = None
            if len(ended) > _ENDED_CALLS:
                ended.popitem(last=False)
        return home

    def accept_forwarded(self, req: node_pb2.ForwardTaskRequest) -> None:
        """A scheduler placed a task here: it runs here for its home node."""
        host = self._host
        own = host.task(req.spec.task_id)
        if own is not None:
            # Our own spilled task, placed back here: run it as a local task.
            if own.phase == Phase.SPILLED:
                self._place_back(own, req.scheduler, req.why)
            return
        task = self._ingest(req)
        spec = task.spec
        if spec.actor_creation:  # the actor will live here, for its creator's node
            self._actors.created(task, hosted_for=req.home_node_id)
        detail = f"placed here by {req.scheduler or 'a global scheduler'}"
        if req.why:
            detail += f": {req.why}"
        host.event(task, TaskState.SCHEDULED, detail=detail)
        self._objects.await_inputs(task, want=True)
        if not task.missing:
            host.make_ready(task)
            host.schedule()

    def accept_calls(self, req: node_pb2.ForwardActorCallsRequest) -> bool:
        """Calls of an actor from callers on another node, in their order: False (none
        taken) when the actor does not live here."""
        sender = req.calls[0].home_node_id if req.calls else b""
        if not self._actors.hosts(req.actor_id) or sender in self.dead_peers:
            return False  # not here, or sent by a node declared dead (what it had is retried)
        host = self._host
        for call in req.calls:
            task_id = call.spec.task_id
            if host.task(task_id) is not None or task_id in self._ended_calls:
                continue  # sent again after a lost answer: it is here already, or ran here
            self._actors.call(self._ingest(call))
        return True

    def _ingest(self, req: node_pb2.ForwardTaskRequest) -> Task:
        """Take a task from another node: its spec, its inputs' data or whereabouts, and
        its home (where its results go)."""
        spec = common_pb2.TaskSpec()
        spec.CopyFrom(req.spec)
        self.forwarded[spec.task_id] = Home(req.home_address, req.home_node_id)
        self._received += 1
        objects = self._objects
        host = self._host
        for data in req.args:
            oid = data.object_id
            if objects.known(oid):
                if not data.inline and data.node_id == req.home_node_id and (
                        oid in objects or objects.remote(oid).node_id != data.node_id):
                    # The home keeps it for us (``lend``), but we need no copy of theirs.
                    self._emit(FreeRemote(data.node_id, oid))
                continue
            if data.inline:
                host.store_object(data)
            else:
                objects.add_remote(oid, data.node_id, data.size, list(data.nested_refs))
        task = host.add_task(spec)
        objects.hold_inputs(spec)
        return task

    def report_home(self, task: Task, home: Home, returns: list[common_pb2.ObjectData],
                    state: TaskState, detail: str, stream_index: int = 0) -> None:
        req = node_pb2.ReportResultsRequest(task_id=task.spec.task_id,
                                            failed=state != TaskState.FINISHED,
                                            error_summary=detail, node_id=self._node_id,
                                            stream_index=stream_index, owner_id=task.spec.owner_id)
        objects = self._objects
        for data in returns:
            out = req.returns.add()
            if data.shm_path:  # keep the bytes here, held for the home node, and say where
                objects.hold_for(home.node_id, data.object_id)
                self._host.store_object(data)
                out.object_id, out.size, out.node_id = data.object_id, data.size, self._node_id
                out.nested_refs.extend(data.nested_refs)
            else:
                out.CopyFrom(data)
        objects.describe_nested(home.node_id, returns, req.nested)
        lost = self._handed_back.pop(task.spec.task_id, None)
        if lost:
            req.lost_inputs.extend(lost)
        self._emit(ReportHome(home.address, req))

    def hand_back(self, oid: bytes, why: str) -> None:
        """Object ``oid`` is lost here (``why``): tasks that run here for another node and
        wait for it go back to their home, which owns it and can rebuild it."""
        host = self._host
        for task in self._objects.waiting_for(oid):
            task_id = task.spec.task_id
            if task_id in self.forwarded and task_id not in self._handed_back:
                self._handed_back[task_id] = list(task.missing)
                host.finish(task, [], TaskState.FAILED, f"handed back to its home: {why}")

    def remote_result(self, req: node_pb2.ReportResultsRequest) -> None:
        """Results of a task we spilled came back from the node that ran it (not from a
        node declared dead: what it ran was given to another node already)."""
        if req.node_id and req.node_id in self.dead_peers:
            return
        if req.stream_index:  # one item of a streaming task: it goes on there
            self._host.stream_item_home(req)
            return
        self.spilled_to.pop(req.task_id, None)
        host = self._host
        task = host.task(req.task_id)
        if task is None:
            for data in req.returns:
                if not data.inline:
                    self._emit(FreeRemote(data.node_id, data.object_id))
            return
        if req.lost_inputs:  # it did not run there: its inputs were lost on the way
            host.inputs_lost(task, list(req.lost_inputs), req.node_id)
            return
        objects = self._objects
        fresh = [data for data in req.nested if not objects.known(data.object_id)]
        for data in fresh:  # objects inside the returns: known here before the returns
            if data.inline:
                host.store_object(data)
            else:
                objects.add_remote(data.object_id, data.node_id, data.size, list(data.nested_refs))
        returns = []
        for data in req.returns:
            oid = data.object_id
            if data.inline:
                returns.append(data)
            elif objects.held(oid):
                # Left where it was made; pulled here when something here reads it.
                objects.add_remote(oid, data.node_id, data.size, list(data.nested_refs))
                if objects.awaited(oid):
                    objects.want(oid)
                owner = task.spec.owner_id
                if host.has_client(owner):
                    host.ready_elsewhere(owner, oid, data.node_id, data.size)
            else:
                self._emit(FreeRemote(data.node_id, oid))
        host.finish(task, returns, TaskState.FAILED if req.failed else TaskState.FINISHED,
                    req.error_summary)
        for data in fresh:  # not inside a return kept here: not kept either
            objects.drop_if_unheld(data.object_id)
        if task.spec.actor_creation:
            self._actors.creation_reported(task.spec.actor_id, req.node_id, req.failed)
