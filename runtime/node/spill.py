"""Bottom-up scheduling across nodes: spilling, forwarded tasks, remote objects. Pure.

A task runs on the node it was submitted to when its resources fit there and the local
queue is under ``spill_threshold``; otherwise the node *spills* it to a global scheduler,
which places it on another node (``ForwardTask``). The submitting node stays the task's
*home*: it keeps the owner's references, gets the results back (``ReportResults``), and
re-runs the task if the node it went to dies. A task is moved at most ``max_spills`` times.

Objects produced elsewhere are known here as *remote* until something needs their bytes;
then they are pulled (one pull per object, however many wait for it) into the local store.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime import _ids
from runtime.protocol import common_pb2, node_pb2, scheduler_pb2

if TYPE_CHECKING:
    from runtime.node.state import NodeState, Task

SPILL = "spill"                # (SPILL, task_id, ScheduleRequest)
PULL = "pull"                  # (PULL, object_id, node_id)
REPORT = "report"              # (REPORT, home_address, ReportResultsRequest)
FREE_REMOTE = "free_remote"    # (FREE_REMOTE, node_id, object_id)
FORWARD_LOG = "forward_log"    # (FORWARD_LOG, address, LogLines)

NEVER_FITS = "never fits here"
QUEUE_FULL = "queue over threshold"


@dataclass(slots=True)
class RemoteObject:
    node_id: bytes
    size: int
    nested: list[bytes]


@dataclass(slots=True)
class Home:
    address: str
    node_id: bytes


class SpillMixin:
    """Multi-node behaviour for NodeState (see the module docstring)."""

    spill_threshold: int
    max_spills: int
    #: Other live nodes: node id -> their total resources (kept by the service from the GCS).
    peer_totals: dict[bytes, dict[str, float]]
    has_schedulers: bool
    remote_objects: dict[bytes, RemoteObject]
    pulling: set[bytes]
    forwarded: dict[bytes, Home]
    spilled_to: dict[bytes, bytes]
    remote_holds: dict[bytes, Counter[bytes]]
    dead_peers: set[bytes]

    # ---- deciding ------------------------------------------------------------------

    def _spill_reason(self: NodeState, task: Task) -> str | None:
        spec = task.spec
        if spec.actor_id or not self.has_schedulers:
            return None  # actors stay where they were created; no scheduler, nowhere to go
        from runtime.node.state import _fits
        if not _fits(task.resources, self.total):
            return NEVER_FITS
        if spec.spill_count or not self.peer_totals:
            return None  # a task placed here by a scheduler stays (no ping-pong of busy nodes)
        if self.queue_length() >= self.spill_threshold and not self._can_run(task.resources):
            return QUEUE_FULL
        return None

    def _spill(self: NodeState, task: Task, reason: str) -> None:
        spec = task.spec
        task.state = "SPILLED"
        req = scheduler_pb2.ScheduleRequest(from_node_id=self.node_id, reason=reason)
        req.spec.CopyFrom(spec)
        req.spec.spill_count = spec.spill_count + 1
        for oid in spec.arg_refs:
            data = req.args.add()
            loc = req.inputs.add(object_id=oid)
            if oid in self.objects:
                self._fill(data, oid)
                data.shm_path = ""  # paths mean nothing on another node
                loc.size = data.size
                loc.node_ids.append(self.node_id)
                copy = self.objects[oid].remote_copy
                if copy:  # another node keeps it too: a scheduler may prefer that one
                    loc.node_ids.append(copy)
            else:  # remote here too: say where it is
                r = self.remote_objects[oid]
                data.object_id, data.size, data.node_id = oid, r.size, r.node_id
                loc.size = r.size
                loc.node_ids.append(r.node_id)
        self.stats["spilled"] += 1
        self.outbox.append((SPILL, spec.task_id, req))

    def spilled(self, task_id: bytes, node_id: bytes, scheduler: str, reason: str) -> None:
        """A global scheduler placed our task on ``node_id``."""
        task = self.tasks.get(task_id)  # type: ignore[attr-defined]
        if task is None or node_id == self.node_id:  # type: ignore[attr-defined]
            return  # done already, or placed back here (accept_forwarded ran it locally)
        self.spilled_to[task_id] = node_id
        task.worker_id = b""
        ev = self._event(task, "SPILLED", detail=reason)  # type: ignore[attr-defined]
        ev.target_node_id, ev.scheduler = node_id, scheduler
        if node_id in self.dead_peers:
            # The node died before the scheduler's answer reached us: run it again now.
            self.node_died(node_id)  # type: ignore[attr-defined]

    def spill_failed(self: NodeState, task_id: bytes) -> None:
        """No global scheduler took the task: run it here if it can ever fit, else wait."""
        task = self.tasks.get(task_id)
        if task is None or task.state != "SPILLED":
            return
        from runtime.node.state import _fits
        if _fits(task.resources, self.total):
            task.spec.spill_count = self.max_spills  # do not try again
            self._make_ready(task)
            self._schedule()
        else:
            task.state = "INFEASIBLE"
            self.infeasible[task_id] = task

    def retry_infeasible(self: NodeState) -> None:
        """Give tasks parked as infeasible another chance (a node or scheduler appeared)."""
        for task in list(self.infeasible.values()):
            if self.has_schedulers:
                del self.infeasible[task.spec.task_id]
                task.state = "WAITING"
                self._make_ready(task)

    # ---- running tasks for other nodes ---------------------------------------------

    def accept_forwarded(self: NodeState, req: node_pb2.ForwardTaskRequest) -> None:
        own = self.tasks.get(req.spec.task_id)
        if own is not None:
            # Our own spilled task, placed back here: run it as a local task.
            if own.state == "SPILLED":
                own.spec.spill_count = req.spec.spill_count
                own.state = "WAITING"
                self.stats["received"] += 1
                self._event(own, "SCHEDULED", detail=f"placed back here by {req.scheduler}")
                if not self._can_run(own.resources) and own.spec.spill_count < self.max_spills:
                    own.spec.spill_count = self.max_spills  # no ping-pong
                self._make_ready(own)
                self._schedule()
            return
        spec = common_pb2.TaskSpec()
        spec.CopyFrom(req.spec)
        self.forwarded[spec.task_id] = Home(req.home_address, req.home_node_id)
        self.stats["received"] += 1
        for data in req.args:
            oid = data.object_id
            if oid in self.objects or oid in self.remote_objects:
                continue
            if data.inline:
                self._store(data)
            else:
                self.remote_objects[oid] = RemoteObject(data.node_id, data.size, list(data.nested_refs))
        from runtime.node.state import Task
        task = Task(spec, dict(spec.resources), set())
        self.tasks[spec.task_id] = task
        for oid in spec.nested_refs:
            self.refs[oid] += 1
        for oid in spec.arg_refs:
            self.refs[oid] += 1
            if oid not in self.objects:
                task.missing.add(oid)
                self.dep_waiters.setdefault(oid, []).append(task)
                self._want(oid)
        self._event(task, "SCHEDULED", detail=f"placed here by {req.scheduler or 'a global scheduler'}")
        if not task.missing:
            self._make_ready(task)
            self._schedule()

    def _report_home(self: NodeState, task: Task, home: Home, returns: list[common_pb2.ObjectData],
                     state: str, detail: str) -> None:
        req = node_pb2.ReportResultsRequest(task_id=task.spec.task_id, failed=state != "FINISHED",
                                            error_summary=detail, node_id=self.node_id)
        holds = self.remote_holds.setdefault(home.node_id, Counter())
        for data in returns:
            out = req.returns.add()
            if data.shm_path:  # keep the bytes here, held for the home node, and say where
                self.refs[data.object_id] += 1
                holds[data.object_id] += 1
                self._store(data)
                out.object_id, out.size, out.node_id = data.object_id, data.size, self.node_id
                out.nested_refs.extend(data.nested_refs)
            else:
                out.CopyFrom(data)
        self.outbox.append((REPORT, home.address, req))

    def remote_result(self: NodeState, req: node_pb2.ReportResultsRequest) -> None:
        """Results of a task we spilled came back from the node that ran it."""
        self.spilled_to.pop(req.task_id, None)
        task = self.tasks.get(req.task_id)
        if task is None:
            for data in req.returns:
                if not data.inline:
                    self.outbox.append((FREE_REMOTE, data.node_id, data.object_id))
            return
        returns = []
        for data in req.returns:
            oid = data.object_id
            if data.inline:
                returns.append(data)
            elif self.refs.get(oid, 0) > 0:
                self.remote_objects[oid] = RemoteObject(data.node_id, data.size, list(data.nested_refs))
                owner = task.spec.owner_id
                if owner in self.clients:  # results always reach their owner: bring it here
                    waiters = self.get_waiters.setdefault(oid, [])
                    if owner not in waiters:
                        waiters.append(owner)
                if oid in self.get_waiters or oid in self.dep_waiters:
                    self._want(oid)
            else:
                self.outbox.append((FREE_REMOTE, data.node_id, oid))
        self._finish(task, returns, "FAILED" if req.failed else "FINISHED", req.error_summary)

    # ---- remote objects ------------------------------------------------------------

    def _want(self: NodeState, oid: bytes) -> None:
        """Make sure a remote object is on its way here."""
        r = self.remote_objects.get(oid)
        if r is None or oid in self.pulling:
            return
        self.pulling.add(oid)
        self.outbox.append((PULL, oid, r.node_id))

    def pulled(self: NodeState, data: common_pb2.ObjectData) -> None:
        """A pull finished: the object is in the local store now."""
        oid = data.object_id
        self.pulling.discard(oid)
        r = self.remote_objects.pop(oid, None)
        if self.refs.get(oid, 0) <= 0:
            self.store.free(oid)
            if r is not None:
                self.outbox.append((FREE_REMOTE, r.node_id, oid))
            return
        self._store(data)
        obj = self.objects.get(oid)
        if obj is not None and r is not None:
            obj.remote_copy = r.node_id

    def pull_failed(self: NodeState, oid: bytes, why: str) -> None:
        self.pulling.discard(oid)
        r = self.remote_objects.pop(oid, None)
        from runtime.exceptions import ObjectLostError
        where = _ids.short(r.node_id) if r is not None else "another node"
        err = ObjectLostError(f"Object {oid.hex()} is lost: pulling it from node {where} failed "
                              f"({why}). The node may have died.", object_id=oid.hex())
        blob = self.encode_error(err)
        self._store(common_pb2.ObjectData(object_id=oid, inline=blob, size=len(blob)))

    def release_remote_holds(self: NodeState, ids: list[bytes], node_id: bytes | None = None) -> None:
        """Another node no longer needs objects we keep for it."""
        for holds in ([self.remote_holds.get(node_id, Counter())] if node_id
                      else list(self.remote_holds.values())):
            for oid in ids:
                if holds.get(oid, 0) > 0:
                    holds[oid] -= 1
                    if not holds[oid]:
                        del holds[oid]
                    self._decref(oid)
                    break

    # ---- node failures -------------------------------------------------------------

    def node_died(self: NodeState, node_id: bytes) -> None:
        """Re-run the tasks we had sent there; objects only it held are lost."""
        self.peer_totals.pop(node_id, None)
        self.dead_peers.add(node_id)
        for task_id, where in list(self.spilled_to.items()):
            if where != node_id:
                continue
            del self.spilled_to[task_id]
            task = self.tasks.get(task_id)
            if task is None:
                continue
            spec = task.spec
            if not task.cancelled and (spec.max_retries < 0 or spec.attempt < spec.max_retries):
                spec.attempt += 1
                self._event(task, "RETRYING", detail=f"node {_ids.short(node_id)} died")
                task.state = "WAITING"
                self._make_ready(task)
            else:
                from runtime.exceptions import NodeDiedError
                self._fail(task, NodeDiedError(
                    f"{spec.name}() (task {_ids.short(task_id)}) was running on node "
                    f"{_ids.short(node_id)}, which died; max_retries={spec.max_retries} spent.",
                    task_id=task_id.hex()))
        for oid, r in list(self.remote_objects.items()):
            if r.node_id == node_id:
                self.pull_failed(oid, f"node {_ids.short(node_id)} died")
        holds = self.remote_holds.pop(node_id, None)
        if holds:
            for oid, n in holds.items():
                self._decref(oid, n)
        self._schedule()
