"""Bottom-up scheduling across nodes: spilling, forwarded tasks, infeasible tasks. Pure, a
part of the local scheduler.

A task runs on the node it was submitted to when its resources fit there and the local
queue is under ``spill_threshold``; otherwise the node *spills* it to a global scheduler,
which places it on another node (``ForwardTask``). The submitting node stays the task's
*home*: it keeps the owner's references, gets the results back (``ReportResults``), and
re-runs the task if the node it went to dies. A task is moved at most ``max_spills`` times.
A task no node can hold waits here, *infeasible*, until a node or a scheduler appears.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from runtime import _ids
from runtime.exceptions import NodeDiedError
from runtime.node.actions import Action, FreeRemote, ReportHome, Spill, SpillReason
from runtime.node.objects import ObjectTable
from runtime.node.resources import Resources
from runtime.node.tasks import Phase, Task, TaskHost
from runtime.protocol import common_pb2, node_pb2, scheduler_pb2
from runtime.protocol.resources import fits
from runtime.protocol.states import TaskState


@dataclass(slots=True)
class Home:
    address: str
    node_id: bytes


class Spilling:
    """Where tasks go when they do not stay here, and tasks that came from elsewhere."""

    __slots__ = ("_emit", "_host", "_node_id", "_objects", "_received", "_resources", "_spilled",
                 "dead_peers", "forwarded", "has_schedulers", "infeasible", "max_spills",
                 "peer_totals", "spill_threshold", "spilled_to")

    def __init__(self, node_id: bytes, host: TaskHost, objects: ObjectTable, resources: Resources,
                 emit: Callable[[Action], None], *, spill_threshold: int, max_spills: int) -> None:
        self._node_id = node_id
        self._host = host
        self._objects = objects
        self._resources = resources
        self._emit = emit
        #: Tasks sent to a global scheduler; tasks placed here by one.
        self._spilled = 0
        self._received = 0
        #: Queue length above which tasks that cannot start now spill to other nodes.
        self.spill_threshold = spill_threshold
        self.max_spills = max_spills
        #: Other live nodes: node id -> their total resources.
        self.peer_totals: dict[bytes, dict[str, float]] = {}
        self.has_schedulers = False
        #: Tasks run here for another node: task id -> that node.
        self.forwarded: dict[bytes, Home] = {}
        #: Our tasks a scheduler placed elsewhere: task id -> node id.
        self.spilled_to: dict[bytes, bytes] = {}
        self.dead_peers: set[bytes] = set()
        #: Tasks no node can hold (yet).
        self.infeasible: dict[bytes, Task] = {}

    def counters(self) -> dict[str, int]:
        """This part's counters, for ``statistics()`` and the node's load."""
        return {"spilled": self._spilled, "received": self._received}

    # ---- deciding ------------------------------------------------------------------

    def fits_nowhere(self, need: Mapping[str, float]) -> bool:
        """True when neither this node nor any known peer could ever hold ``need``."""
        return (not self._resources.ever_fits(need)
                and not any(fits(need, t) for t in self.peer_totals.values()))

    def park(self, task: Task) -> None:
        """Keep ``task`` aside until a node that fits it joins."""
        task.phase = Phase.INFEASIBLE
        self.infeasible[task.spec.task_id] = task

    def park_unplaceable(self, task: Task) -> bool:
        """An infeasible ``task`` that no scheduler can place elsewhere (none is known, or it
        is an actor's, which stays here) is parked: True."""
        if self.has_schedulers and not task.spec.actor_id:
            return False
        self.park(task)
        return True

    def reason(self, task: Task) -> SpillReason | None:
        """Why ``task`` should leave this node, or None when it stays."""
        spec = task.spec
        if spec.actor_id or not self.has_schedulers:
            return None  # actors stay where they were created; no scheduler, nowhere to go
        if not self._resources.ever_fits(task.resources):
            return SpillReason.NEVER_FITS
        if spec.spill_count or not self.peer_totals:
            return None  # a task placed here by a scheduler stays (no ping-pong of busy nodes)
        if (self._host.queue_length() >= self.spill_threshold
                and not self._resources.can_run(task.resources)):
            return SpillReason.QUEUE_FULL
        return None

    def spill(self, task: Task, reason: SpillReason) -> None:
        spec = task.spec
        task.phase = Phase.SPILLED
        req = scheduler_pb2.ScheduleRequest(from_node_id=self._node_id, reason=reason)
        req.spec.CopyFrom(spec)
        req.spec.spill_count = spec.spill_count + 1
        objects = self._objects
        for oid in spec.arg_refs:
            data = req.args.add()
            loc = req.inputs.add(object_id=oid)
            if oid in objects:
                objects.fill(data, oid)
                data.shm_path = ""  # paths mean nothing on another node
                loc.size = data.size
                loc.node_ids.append(self._node_id)
                copy = objects.remote_copy(oid)
                if copy:  # another node keeps it too: a scheduler may prefer that one
                    loc.node_ids.append(copy)
            else:  # remote here too: say where it is
                r = objects.remote(oid)
                data.object_id, data.size, data.node_id = oid, r.size, r.node_id
                loc.size = r.size
                loc.node_ids.append(r.node_id)
        self._spilled += 1
        self._emit(Spill(spec.task_id, req, reason))

    def spilled(self, task_id: bytes, node_id: bytes, scheduler: str, reason: str) -> None:
        """A global scheduler placed our task on ``node_id``."""
        task = self._host.task(task_id)
        if task is None or node_id == self._node_id:
            return  # done already, or placed back here (accept_forwarded ran it locally)
        self.spilled_to[task_id] = node_id
        task.worker_id = b""
        ev = self._host.event(task, TaskState.SPILLED, detail=reason)
        ev.target_node_id, ev.scheduler = node_id, scheduler
        if node_id in self.dead_peers:
            # The node died before the scheduler's answer reached us: run it again now.
            self.peer_died(node_id)

    def spill_failed(self, task_id: bytes) -> None:
        """No global scheduler took the task: run it here if it can ever fit, else wait."""
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

    def peer_alive(self, node_id: bytes, totals: dict[str, float]) -> None:
        new = node_id not in self.peer_totals
        # Alive again (the GCS took it back): a task placed there from now on runs there.
        self.dead_peers.discard(node_id)
        self.peer_totals[node_id] = dict(totals)
        if new:
            self._retry_infeasible()

    def set_schedulers(self, available: bool) -> None:
        had = self.has_schedulers
        self.has_schedulers = available
        if available and not had:
            self._retry_infeasible()

    def peer_died(self, node_id: bytes) -> None:
        """Re-run the tasks we had sent there; objects only it held are lost."""
        self.peer_totals.pop(node_id, None)
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
            if not task.cancelled and (spec.max_retries < 0 or spec.attempt < spec.max_retries):
                spec.attempt += 1
                host.event(task, TaskState.RETRYING, detail=f"node {_ids.short(node_id)} died")
                task.phase = Phase.WAITING
                host.make_ready(task)
            else:
                host.fail(task, NodeDiedError(
                    f"{spec.name}() (task {_ids.short(task_id)}) was running on node "
                    f"{_ids.short(node_id)}, which died; max_retries={spec.max_retries} spent.",
                    task_id=task_id.hex()))
        for oid in self._objects.remote_on(node_id):
            host.store_object(self._objects.pull_lost(oid, f"node {_ids.short(node_id)} died"))
        self._objects.drop_holds(node_id)
        host.schedule()

    # ---- running tasks for other nodes ---------------------------------------------

    def is_forwarded(self, task_id: bytes) -> bool:
        return task_id in self.forwarded

    def task_over(self, task_id: bytes) -> Home | None:
        """Task ``task_id`` ended: its home node when it ran here for another one."""
        self.infeasible.pop(task_id, None)
        return self.forwarded.pop(task_id, None)

    def accept_forwarded(self, req: node_pb2.ForwardTaskRequest) -> None:
        host = self._host
        own = host.task(req.spec.task_id)
        if own is not None:
            # Our own spilled task, placed back here: run it as a local task.
            if own.phase == Phase.SPILLED:
                own.spec.spill_count = req.spec.spill_count
                own.phase = Phase.WAITING
                self._received += 1
                host.event(own, TaskState.SCHEDULED, detail=f"placed back here by {req.scheduler}")
                if (not self._resources.can_run(own.resources)
                        and own.spec.spill_count < self.max_spills):
                    own.spec.spill_count = self.max_spills  # no ping-pong
                host.make_ready(own)
                host.schedule()
            return
        spec = common_pb2.TaskSpec()
        spec.CopyFrom(req.spec)
        self.forwarded[spec.task_id] = Home(req.home_address, req.home_node_id)
        self._received += 1
        objects = self._objects
        for data in req.args:
            oid = data.object_id
            if objects.known(oid):
                continue
            if data.inline:
                host.store_object(data)
            else:
                objects.add_remote(oid, data.node_id, data.size, list(data.nested_refs))
        task = host.add_task(spec)
        objects.hold_inputs(spec)
        objects.await_inputs(task, want=True)
        host.event(task, TaskState.SCHEDULED,
                   detail=f"placed here by {req.scheduler or 'a global scheduler'}")
        if not task.missing:
            host.make_ready(task)
            host.schedule()

    def report_home(self, task: Task, home: Home, returns: list[common_pb2.ObjectData],
                    state: TaskState, detail: str) -> None:
        req = node_pb2.ReportResultsRequest(task_id=task.spec.task_id,
                                            failed=state != TaskState.FINISHED,
                                            error_summary=detail, node_id=self._node_id)
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
        self._emit(ReportHome(home.address, req))

    def remote_result(self, req: node_pb2.ReportResultsRequest) -> None:
        """Results of a task we spilled came back from the node that ran it."""
        self.spilled_to.pop(req.task_id, None)
        host = self._host
        task = host.task(req.task_id)
        if task is None:
            for data in req.returns:
                if not data.inline:
                    self._emit(FreeRemote(data.node_id, data.object_id))
            return
        objects = self._objects
        returns = []
        for data in req.returns:
            oid = data.object_id
            if data.inline:
                returns.append(data)
            elif objects.held(oid):
                objects.add_remote(oid, data.node_id, data.size, list(data.nested_refs))
                owner = task.spec.owner_id
                if host.has_client(owner):  # results always reach their owner: bring it here
                    objects.wait_get(oid, owner, once=True)
                if objects.awaited(oid):
                    objects.want(oid)
            else:
                self._emit(FreeRemote(data.node_id, oid))
        host.finish(task, returns, TaskState.FAILED if req.failed else TaskState.FINISHED,
                    req.error_summary)
