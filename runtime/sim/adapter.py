"""The simulator's one point of contact with the real state machines and their messages.

Everything the simulator drives is imported here and nowhere else in ``runtime.sim``: the
node's ``LocalScheduler`` and its actions, the global scheduler's ``ClusterView`` and
``PlacementAttempts``, the GCS's ``GcsState`` and its ``Publisher``, and the protobuf
messages between them. When one of their signatures changes, this module is the one to
follow. It holds no scheduling logic: it builds messages the way the thin service
modules do (``runtime/node/peers.py``, ``runtime/scheduler/service.py``) and calls the
pure objects; the decisions are theirs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from runtime import _ids
from runtime.config import Settings
from runtime.gcs.service import Publisher
from runtime.gcs.state import Change, GcsState, shard_of
from runtime.node.actions import (
    Action,
    FreeRemote,
    KillWorker,
    ObjectLocation,
    Pull,
    ReportEvent,
    ReportHome,
    Send,
    Spill,
    StartWorker,
    StopWorker,
)
from runtime.node.state import LocalScheduler
from runtime.protocol import codec, common_pb2, gcs_pb2, node_pb2, scheduler_pb2
from runtime.protocol.states import TERMINAL_TASK_STATES, ClientKind
from runtime.scheduler.policies import make_policy
from runtime.scheduler.state import ClusterView, Placement, PlacementAttempts, Unschedulable, Wait

__all__ = [
    "Action", "Answer", "Change", "ClusterView", "Forward", "FreeRemote", "GcsState", "Hold",
    "KillWorker", "LocalScheduler", "NullStore", "ObjectLocation", "PlacementAttempts", "Pull",
    "ReportEvent", "ReportHome", "Send", "Settings", "Spill", "StartWorker", "StopWorker",
]

TaskEvent = common_pb2.TaskEvent
ObjectUpdate = gcs_pb2.ObjectLocationUpdate
NodeLoad = common_pb2.NodeLoad
ForwardRequest = node_pb2.ForwardTaskRequest
ResultsRequest = node_pb2.ReportResultsRequest

_DRIVER, _WORKER = ClientKind.DRIVER.value, ClientKind.WORKER.value
_EXECUTE, _OBJECT = "execute", "object"


class NullStore:
    """The shared-memory store, reduced to what the local scheduler calls: every value in
    the simulation is small and travels inline, so nothing is ever sealed here."""

    def seal(self, object_id: bytes, size: int) -> None: ...

    def locate(self, object_id: bytes) -> str:
        return "/sim/" + object_id.hex()

    def pin(self, object_id: bytes) -> None: ...

    def unpin(self, object_id: bytes) -> None: ...

    def free(self, object_id: bytes) -> None: ...

    def mark_mapped(self, object_ids: Iterable[bytes]) -> None: ...


def encode_error(err: BaseException) -> bytes:
    """Node-made errors, serialized as the node manager does."""
    return codec.serialize(err, error=True).to_bytes()


def sim_id(kind: bytes, index: int, seq: int = 0) -> bytes:
    """A 16-byte id: a one-byte kind, the index of its node, a sequence number."""
    return kind[:1] + index.to_bytes(4, "big") + seq.to_bytes(8, "big") + b"\0\0\0"


# ---- the node ----------------------------------------------------------------------------

def new_node(node_id: bytes, cpus: float, settings: Settings, clock: Callable[[], float]) -> LocalScheduler:
    """A node's real local scheduler with ``cpus`` CPUs, on simulated time."""
    return LocalScheduler(node_id, {"CPU": float(cpus)}, NullStore(), encode_error,
                          settings=settings, clock=clock)


def connect_driver(node: LocalScheduler, client_id: bytes) -> None:
    node.connect(client_id, _DRIVER, 1)


def start_worker(node: LocalScheduler, worker_id: bytes, counted: bool) -> None:
    """The pool started ``worker_id`` (``counted``: a StartWorker asked for it)."""
    node.worker_starting(worker_id, counted=counted)


def connect_worker(node: LocalScheduler, client_id: bytes, worker_id: bytes, pid: int) -> None:
    node.connect(client_id, _WORKER, pid, worker_id)


def task_spec(task_id: bytes, owner_id: bytes, function_id: bytes, cpus: float) -> common_pb2.TaskSpec:
    """A short task with no arguments and one return, as a driver submits it."""
    spec = common_pb2.TaskSpec(task_id=task_id, name="short", num_returns=1, owner_id=owner_id,
                               function_id=function_id, max_retries=3)
    spec.resources["CPU"] = cpus
    return spec


def submit(node: LocalScheduler, client_id: bytes, spec: common_pb2.TaskSpec) -> None:
    node.submit(client_id, spec)


def task_done(node: LocalScheduler, client_id: bytes, task_id: bytes) -> None:
    """A worker reports ``task_id`` finished with one small inline return."""
    ret = common_pb2.ObjectData(object_id=_ids.object_id(task_id, 1), inline=b"ok", size=2)
    node.result(client_id, node_pb2.TaskResult(task_id=task_id, returns=[ret]))


def drop_refs(node: LocalScheduler, client_id: bytes, object_ids: Sequence[bytes]) -> None:
    """A driver dropped its references to ``object_ids``."""
    node.update_refs(client_id, (), object_ids)


def executed_task(op: node_pb2.NodeOp) -> bytes | None:
    """The task id an ``execute`` op hands a worker (None for other ops)."""
    return op.execute.spec.task_id if op.WhichOneof("op") == _EXECUTE else None


def delivered_object(op: node_pb2.NodeOp) -> bytes | None:
    """The object id an ``object`` op delivers to a client (None for other ops)."""
    return op.object.object_id if op.WhichOneof("op") == _OBJECT else None


def task_of(object_id: bytes) -> bytes:
    return _ids.task_of(object_id)


def load(node: LocalScheduler) -> common_pb2.NodeLoad:
    return node.load()


def set_schedulers(node: LocalScheduler) -> None:
    """The node learns that scheduler replicas exist (``Peers.refresh_schedulers``)."""
    node.set_schedulers(True)


def peer_rows(node: LocalScheduler, rows: Iterable[tuple[bytes, common_pb2.NodeLoad]]) -> None:
    """Rows of the GCS ``nodes`` table reach the node: each live peer with its load
    (``Peers.node_row``; the node's own row is skipped there too)."""
    me = node.node_id
    for node_id, load_ in rows:
        if node_id != me:
            node.peer_alive(node_id, load_)


def needs_scheduler(action: Spill) -> bool:
    """True when only a scheduler can place the task: the home keeps asking, and such
    spills are not limited in flight (``Peers._spill``)."""
    return action.reason.needs_scheduler


def answer_home(node: LocalScheduler, action: Spill, reply: scheduler_pb2.ScheduleReply) -> None:
    """A replica answered the home's ``Schedule`` call (``Peers._placed``)."""
    if reply.unschedulable:
        node.unschedulable(action.task_id, reply.unschedulable)
    else:
        node.spilled(action.task_id, reply.node_id, reply.scheduler, action.reason, reply.why)


def spill_failed(node: LocalScheduler, task_id: bytes) -> None:
    """No replica answered: the home runs the task itself."""
    node.spill_failed(task_id)


def accept_forwarded(node: LocalScheduler, request: node_pb2.ForwardTaskRequest) -> None:
    node.accept_forwarded(request)


def remote_result(node: LocalScheduler, request: node_pb2.ReportResultsRequest) -> None:
    node.remote_result(request)


def release_remote_holds(node: LocalScheduler, object_ids: list[bytes], node_id: bytes) -> None:
    node.release_remote_holds(object_ids, node_id)


def pulled(node: LocalScheduler, source: LocalScheduler, object_id: bytes) -> None:
    """Node ``node`` pulled ``object_id`` from ``source`` (its bytes inline), or failed to."""
    found = source.pull_source(object_id)
    if found is None:
        node.pull_failed(object_id, "not on the source node")
        return
    node.pulled(common_pb2.ObjectData(object_id=object_id, inline=found.inline or b"", size=found.size,
                                      nested_refs=found.nested))


def worker_exited(node: LocalScheduler, worker_id: bytes) -> None:
    node.worker_exited(worker_id, -9)


def results_from(action: ReportHome, node_address: str) -> node_pb2.ReportResultsRequest:
    """The ``ReportResults`` request of a ``ReportHome`` action, sent from ``node_address``
    (``Peers._report``)."""
    req = action.request
    req.node_address = node_address
    return req


# ---- the global scheduler ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Answer:
    """Reply to the home now: placed back on it, or unschedulable."""

    reply: scheduler_pb2.ScheduleReply


@dataclass(frozen=True, slots=True)
class Hold:
    """No node can take the task now: the call waits for the view to change."""

    why: str


@dataclass(frozen=True, slots=True)
class Forward:
    """Hand the task to ``node_id`` with ``ForwardTask``, then send ``reply`` home."""

    node_id: bytes
    reply: scheduler_pb2.ScheduleReply


ScheduleStep = Answer | Hold | Forward


class ScheduleCall:
    """One ``Schedule`` call on a replica: what ``SchedulerService.Schedule`` builds from the
    request, and its steps through the real ``PlacementAttempts``."""

    __slots__ = ("action", "attempts", "forward", "home_id", "scheduler")

    def __init__(self, view: ClusterView, action: Spill, home_address: str, scheduler: str) -> None:
        req = action.request
        spec = req.spec
        self.action = action
        self.scheduler = scheduler
        self.home_id = req.from_node_id
        self.forward = node_pb2.ForwardTaskRequest(spec=spec, args=req.args, home_address=home_address,
                                                   home_node_id=req.from_node_id, scheduler=scheduler,
                                                   reason=req.reason)
        self.attempts = PlacementAttempts(view, dict(spec.resources), req.inputs, home=req.from_node_id,
                                          strategy=spec.strategy, home_load=req.home_load)

    def step(self) -> ScheduleStep:
        """The next step of the call (one ``attempts.next()``)."""
        step = self.attempts.next()
        if isinstance(step, Unschedulable):
            return Answer(scheduler_pb2.ScheduleReply(scheduler=self.scheduler, unschedulable=step.why))
        if isinstance(step, Wait):
            return Hold(step.why)
        assert isinstance(step, Placement)
        reply = scheduler_pb2.ScheduleReply(node_id=step.node_id, node_address=step.address,
                                            scheduler=self.scheduler, why=step.why)
        if step.node_id == self.home_id:
            return Answer(reply)  # back on its home: nothing to forward
        self.forward.why = step.why
        return Forward(step.node_id, reply)

    def forward_request(self) -> node_pb2.ForwardTaskRequest:
        """The ``ForwardTask`` request as the target node decodes it (its own copy)."""
        out = node_pb2.ForwardTaskRequest()
        out.CopyFrom(self.forward)
        return out


def new_view(policy: str, rng: random.Random, task_time_s: float) -> ClusterView:
    """A replica's view with its placement policy (seeded for repeatable runs)."""
    options = {"task_time_s": task_time_s} if policy == "locality" else {}
    return ClusterView(make_policy(policy, rng=rng, **options))


def apply_rows(view: ClusterView, changes: Sequence[Change]) -> None:
    """Apply changes of the ``nodes`` table to a replica's view (``NodeFeed._follow``)."""
    for c in changes:
        view.apply(c.key, c.value, c.deleted)


def reset_view(view: ClusterView, rows: Iterable[gcs_pb2.NodeRow]) -> None:
    """A replica's first snapshot of the ``nodes`` table."""
    view.reset(rows)


def node_row(node_id: bytes, address: str, load_: common_pb2.NodeLoad) -> gcs_pb2.NodeRow:
    return gcs_pb2.NodeRow(node_id=node_id, address=address, alive=True, load=load_)


# ---- the GCS -------------------------------------------------------------------------------

def new_gcs(storage_shards: int, clock: Callable[[], float]) -> GcsState:
    """One GCS process's state; task and event tables bounded as the daemon's defaults."""
    return GcsState(num_shards=storage_shards, clock=clock)


def gcs_shard(key: bytes, processes: int) -> int:
    """The GCS process that holds ``key`` when every shard is its own process."""
    return shard_of(key, processes) if processes > 1 else 0


def object_update(node_id: bytes, action: ObjectLocation) -> gcs_pb2.ObjectLocationUpdate:
    """A ``ReportEvents`` entry for an ``ObjectLocation`` action (``GcsReporter``)."""
    return gcs_pb2.ObjectLocationUpdate(object_id=action.object_id, node_id=node_id, size=action.size,
                                        removed=action.removed)


def report_events(gcs: GcsState, events: list[common_pb2.TaskEvent],
                  objects: list[gcs_pb2.ObjectLocationUpdate]) -> list[Change]:
    """One ``ReportEvents`` call: apply the batch, return the changes to publish."""
    gcs.report_events(events, objects)
    return gcs.take_changes()


def heartbeat(gcs: GcsState, node_id: bytes, load_: common_pb2.NodeLoad) -> list[Change]:
    """One ``Heartbeat`` call: record the load, return the changes to publish."""
    gcs.heartbeat(node_id, load_)
    return gcs.take_changes()


def register_node(gcs: GcsState, row: gcs_pb2.NodeRow) -> None:
    gcs.register_node(row)
    gcs.take_changes()


def node_rows(gcs: GcsState) -> list[gcs_pb2.NodeRow]:
    """Every row of the ``nodes`` table (a subscriber's snapshot)."""
    return [gcs_pb2.NodeRow.FromString(v) for _, v in gcs.items("nodes")]


def nodes_changes(changes: Iterable[Change]) -> list[Change]:
    """The changes of the ``nodes`` table (those the replicas and nodes subscribe to)."""
    return [c for c in changes if c.table == "nodes"]


def row_load(change: Change) -> tuple[bytes, common_pb2.NodeLoad] | None:
    """A live node's id and load from a ``nodes`` change (None: deleted or dead)."""
    if change.deleted or not change.value:
        return None
    row = gcs_pb2.NodeRow.FromString(change.value)
    return (row.node_id, row.load) if row.alive else None


def terminal_tasks(events: Iterable[common_pb2.TaskEvent]) -> list[bytes]:
    """Ids of the tasks that these events end."""
    return [ev.task_id for ev in events if ev.state in TERMINAL_TASK_STATES]


def publish_cost_s(subscribers: int = 64, changes: int = 200) -> float:
    """Seconds the real GCS ``Publisher`` takes per change per subscriber, measured here
    with ``subscribers`` subscribers of ``nodes`` (queues drained after each change).

    This is the GCS-side part only; the gRPC stream writes that follow are not counted.
    """
    pub = Publisher(queue_size=changes + 1)
    subs = [pub.subscribe(["nodes"]) for _ in range(subscribers)]
    row = node_row(b"n" * 16, "sim", common_pb2.NodeLoad(total={"CPU": 4.0}, available={"CPU": 2.0}))
    change = Change("nodes", row.node_id, row.SerializeToString())
    t0 = time.perf_counter()
    for _ in range(changes):
        pub.publish([change])
    elapsed = time.perf_counter() - t0
    for sub in subs:
        while not sub.queue.empty():
            sub.queue.get_nowait()
        pub.unsubscribe(sub)
    return elapsed / (changes * subscribers)
