"""Read and watch the cluster's state: nodes, tasks, objects, jobs, actors, scheduler events.

This is the read side of cellray, for a user at a prompt and for dashboards (the notebook
widgets are built on this module alone). Every row of the Global Control Store (GCS) comes
out as a frozen dataclass with hex ids and plain Python values; nothing here returns
protobuf messages.

- **Queries**, one round trip to the GCS each: ``list_nodes``, ``list_tasks``, ``get_task``,
  ``list_objects``, ``list_jobs``, ``list_actors``, ``list_events``, ``summarize_tasks``.
- **Subscriptions**: ``subscribe(tables, callback)`` delivers a snapshot of the tables and
  then every change as it happens, on a background thread, until ``Subscription.close()``.
- **Driver hooks** for the notebook extension: ``add_output_handler`` (what remote tasks
  print), ``set_origin_provider`` (tag submitted work so that its output finds the cell that
  started it) and ``add_task_event_handler`` (warnings the scheduler sends this driver).

Everything uses the connection made by ``runtime.init()`` and raises ``RuntimeError`` when
there is none. Times are unix seconds (``time.time()``); ids are hex strings.

Examples
--------
>>> import runtime as rt
>>> from runtime import state
>>> rt.init(num_cpus=2)                                        # doctest: +SKIP
>>> [(n.hostname, n.resources_total) for n in state.list_nodes()]  # doctest: +SKIP
[('box', {'CPU': 2.0})]
>>> state.summarize_tasks()                                    # doctest: +SKIP
{'FINISHED': 10, 'RUNNING': 2}
>>> sub = state.subscribe(["tasks"], lambda c: print(c.table, c.key, c.value))  # doctest: +SKIP
>>> sub.close()                                                # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from runtime.api import _context
from runtime.exceptions import ClientClosedError
from runtime.protocol import common_pb2, gcs_pb2, node_pb2

if TYPE_CHECKING:
    from runtime.api._client import CoreClient
    from runtime.api._object_ref import ObjectRef
    from runtime.gcs.client import GcsClient

logger = logging.getLogger(__name__)

__all__ = [
    "GpuState", "NodeState", "TaskState", "ObjectState", "JobState", "ActorState",
    "SchedulerEvent", "OutputLines", "Change", "Subscription", "Row", "TABLES",
    "TERMINAL_TASK_STATES", "decode_row",
    "list_nodes", "list_tasks", "get_task", "list_objects", "list_jobs", "list_actors",
    "list_events", "summarize_tasks", "subscribe",
    "add_output_handler", "remove_output_handler", "set_origin_provider",
    "add_task_event_handler", "remove_task_event_handler",
]

_T = TypeVar("_T")

#: Tables this module reads and subscribes to (the GCS's ``functions`` and ``kv`` hold
#: pickles and opaque bytes, not state).
TABLES = ("nodes", "jobs", "tasks", "objects", "actors", "events")
#: Task states after which a task does nothing more (its row keeps its end time).
TERMINAL_TASK_STATES = frozenset({"FINISHED", "FAILED", "CANCELLED"})
#: The task states the runtime reports; ``list_tasks(state=...)`` also accepts any other
#: state that a task in the table has.
_KNOWN_TASK_STATES = ("SUBMITTED", "QUEUED", "SCHEDULED", "SPILLED", "RUNNING", "RETRYING",
                      "FINISHED", "FAILED", "CANCELLED", "INFEASIBLE")
#: Deadline of one query, on top of the GCS client's own per-call deadline.
_QUERY_TIMEOUT_S = 60.0


def _hex(b: bytes) -> str | None:
    return b.hex() if b else None


def _when(t: float) -> float | None:
    return t if t > 0 else None


# ---- the rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuState:
    """One GPU of a node, as of the node's latest heartbeat.

    Attributes
    ----------
    index : int
        The GPU's index on its node (what ``CUDA_VISIBLE_DEVICES`` names).
    name : str
        Model name reported by NVML ("NVIDIA H100 80GB HBM3"); "" for a logical GPU.
    memory_total, memory_used : int
        Bytes of GPU memory (0 for a logical GPU).
    utilization : float
        Percent of time the GPU was busy over NVML's last sample period.
    """

    index: int
    name: str
    memory_total: int
    memory_used: int
    utilization: float

    @classmethod
    def from_proto(cls, gpu: common_pb2.GpuInfo) -> GpuState:
        """Build from a heartbeat's ``GpuInfo``."""
        return cls(index=gpu.index, name=gpu.name, memory_total=gpu.memory_total,
                   memory_used=gpu.memory_used, utilization=gpu.utilization)


@dataclass(frozen=True)
class NodeState:
    """A node of the cluster: its address, whether it is alive, and its latest load.

    The load fields come from the node's latest heartbeat (every 0.5 s by default), so they
    lag the node by up to one heartbeat. A dead node keeps its row, with ``alive`` False
    and ``death_cause`` saying why.

    Attributes
    ----------
    node_id : str
        Hex id of the node.
    address : str
        ``host:port`` of its node manager.
    hostname : str
        Name of the machine.
    alive : bool
        False once the node stopped or missed heartbeats for too long.
    resources_total, resources_available : dict[str, float]
        Resources the node offers ("CPU", "GPU", custom ones), and those not in use.
    queue_length : int
        Tasks ready to run that wait for resources or a worker.
    store_used, store_capacity : int
        Bytes of the node's shared-memory object store in use, and its size.
    num_workers : int
        Worker processes on the node.
    cpu_percent : float
        Machine-wide CPU use, in percent.
    memory_used, memory_total : int
        Machine-wide memory in bytes.
    gpus : tuple[GpuState, ...]
        The node's GPUs (empty without NVML; logical GPUs only appear in the resources).
    last_heartbeat : float | None
        When the GCS last heard from the node.
    death_cause : str
        Why the node is dead ("stopped", "no heartbeat for 10.2 s ..."); "" while alive.
    start_time : float | None
        When the node registered.
    pid : int
        Process id of the node manager (on its own machine).
    labels : dict[str, str]
        Labels given to the node at start.
    tasks_local, tasks_spilled, tasks_received : int
        Scheduling decisions so far: tasks this node ran itself, tasks it spilled to a
        global scheduler, and tasks global schedulers placed on it.
    """

    node_id: str
    address: str
    hostname: str
    alive: bool
    resources_total: dict[str, float] = field(hash=False)
    resources_available: dict[str, float] = field(hash=False)
    queue_length: int
    store_used: int
    store_capacity: int
    num_workers: int
    cpu_percent: float
    memory_used: int
    memory_total: int
    gpus: tuple[GpuState, ...]
    last_heartbeat: float | None
    death_cause: str
    start_time: float | None
    pid: int
    labels: dict[str, str] = field(hash=False)
    tasks_local: int = 0
    tasks_spilled: int = 0
    tasks_received: int = 0

    @classmethod
    def from_row(cls, row: gcs_pb2.NodeRow) -> NodeState:
        """Build from a GCS ``nodes`` row."""
        load = row.load
        return cls(node_id=row.node_id.hex(), address=row.address, hostname=row.hostname,
                   alive=row.alive, resources_total=dict(load.total),
                   resources_available=dict(load.available), queue_length=load.queue_length,
                   store_used=load.store_used, store_capacity=load.store_capacity,
                   num_workers=load.num_workers, cpu_percent=load.cpu_percent,
                   memory_used=load.memory_used, memory_total=load.memory_total,
                   gpus=tuple(GpuState.from_proto(g) for g in load.gpus),
                   last_heartbeat=_when(row.last_heartbeat), death_cause=row.death_cause,
                   start_time=_when(row.start_time), pid=row.pid, labels=dict(row.labels),
                   tasks_local=load.tasks_local, tasks_spilled=load.tasks_spilled,
                   tasks_received=load.tasks_received)


@dataclass(frozen=True)
class SchedulerEvent:
    """One state change of a task: a scheduler decision, a warning, or a step in its life.

    ``list_events`` returns the scheduler's decisions (SCHEDULED, SPILLED and why, and
    INFEASIBLE); ``add_task_event_handler`` receives the warnings sent to this driver
    (INFEASIBLE, for one); ``TaskState.history`` holds a task's latest transitions.

    Attributes
    ----------
    task_id : str
        Hex id of the task.
    name : str
        The task's function name, e.g. "f" or "Counter.inc".
    state : str
        The state entered: SUBMITTED, QUEUED, SCHEDULED, SPILLED, RUNNING, RETRYING,
        FINISHED, FAILED, CANCELLED or INFEASIBLE.
    node_id : str | None
        Hex id of the node that decided or reported it.
    target_node_id : str | None
        For SPILLED: the node the task was sent to.
    scheduler : str
        For SPILLED: the global scheduler replica that placed it.
    detail : str
        Why: the spill reason, what an infeasible task needs, an error's first line.
    time : float | None
        When it happened.
    job_id : str | None
        Hex id of the task's job.
    attempt : int
        Which attempt of the task (0 for the first run; retries count up).
    worker_pid : int | None
        The worker running the task, when one was.
    actor_id : str | None
        Hex id of the actor, for an actor task.
    """

    task_id: str
    name: str
    state: str
    node_id: str | None
    target_node_id: str | None
    scheduler: str
    detail: str
    time: float | None
    job_id: str | None = None
    attempt: int = 0
    worker_pid: int | None = None
    actor_id: str | None = None

    @classmethod
    def from_proto(cls, ev: common_pb2.TaskEvent) -> SchedulerEvent:
        """Build from a ``TaskEvent`` (a row of the ``events`` table, or one sent to a driver)."""
        return cls(task_id=ev.task_id.hex(), name=ev.name, state=ev.state, node_id=_hex(ev.node_id),
                   target_node_id=_hex(ev.target_node_id), scheduler=ev.scheduler,
                   detail=ev.detail, time=_when(ev.time), job_id=_hex(ev.job_id),
                   attempt=ev.attempt, worker_pid=ev.worker_pid or None, actor_id=_hex(ev.actor_id))


@dataclass(frozen=True)
class TaskState:
    """A task as the GCS last heard of it.

    Task events reach the GCS in batches (every 0.1 s by default), so a task's row lags
    the task a little. The GCS keeps a bounded number of tasks and drops the oldest
    finished ones first.

    Attributes
    ----------
    task_id : str
        Hex id of the task (``ref.task_id()`` of its ObjectRef).
    name : str
        The function name, e.g. "f" or "Counter.inc".
    job_id : str | None
        Hex id of the job (driver) that submitted it.
    state : str
        SUBMITTED, QUEUED, SCHEDULED, SPILLED, RUNNING, RETRYING, FINISHED, FAILED,
        CANCELLED or INFEASIBLE.
    node_id : str | None
        Hex id of the node where it last was.
    worker_pid : int | None
        Process id of the worker that ran it.
    submit_time, start_time, end_time : float | None
        When it was submitted, started running (latest attempt) and finished.
    detail : str
        The error's first line for a FAILED task; why, for other states; often "".
    attempt : int
        0 for the first run; each retry counts up.
    actor_id : str | None
        Hex id of the actor, for an actor task.
    history : tuple[SchedulerEvent, ...]
        The task's latest state changes, oldest first (a bounded few; built when read).
    """

    task_id: str
    name: str
    job_id: str | None
    state: str
    node_id: str | None
    worker_pid: int | None
    submit_time: float | None
    start_time: float | None
    end_time: float | None
    detail: str
    attempt: int
    actor_id: str | None
    #: The row's history as received; ``history`` turns it into dataclasses when asked,
    #: which keeps listing many tasks cheap (building them costs most of the decoding).
    _events: tuple[common_pb2.TaskEvent, ...] = field(default=(), repr=False, compare=False)

    @property
    def history(self) -> tuple[SchedulerEvent, ...]:
        """The task's latest state changes, oldest first (the GCS keeps a bounded few)."""
        return tuple(SchedulerEvent.from_proto(e) for e in self._events)

    @property
    def duration(self) -> float | None:
        """Seconds from start to end of the run; None until it ended (or if it never ran)."""
        if self.start_time is None or self.end_time is None:
            return None
        return max(self.end_time - self.start_time, 0.0)

    @property
    def done(self) -> bool:
        """True once the task is FINISHED, FAILED or CANCELLED."""
        return self.state in TERMINAL_TASK_STATES

    @classmethod
    def from_row(cls, row: gcs_pb2.TaskRow) -> TaskState:
        """Build from a GCS ``tasks`` row."""
        return cls(task_id=row.task_id.hex(), name=row.name, job_id=_hex(row.job_id),
                   state=row.state, node_id=_hex(row.node_id), worker_pid=row.worker_pid or None,
                   submit_time=_when(row.submit_time), start_time=_when(row.start_time),
                   end_time=_when(row.end_time), detail=row.detail, attempt=row.attempt,
                   actor_id=_hex(row.actor_id), _events=tuple(row.history))


@dataclass(frozen=True)
class ObjectState:
    """An object in a node's shared-memory object store.

    Only objects in a store are listed: small values (up to the inline threshold, 100 KiB
    by default) travel inside messages and live with their owner, so the GCS never hears
    of them.

    Attributes
    ----------
    object_id : str
        Hex id of the object (``ref.hex()``).
    size : int
        Serialized size in bytes.
    locations : tuple[str, ...]
        Hex ids of the nodes holding a copy.
    spilled : bool
        True when the copy was spilled to disk because the store was full.
    owner_id : str | None
        Hex id of the client (driver or worker) that owns it, when known.
    """

    object_id: str
    size: int
    locations: tuple[str, ...]
    spilled: bool
    owner_id: str | None = None

    @classmethod
    def from_row(cls, row: gcs_pb2.ObjectRow) -> ObjectState:
        """Build from a GCS ``objects`` row."""
        return cls(object_id=row.object_id.hex(), size=row.size,
                   locations=tuple(n.hex() for n in row.locations), spilled=row.spilled,
                   owner_id=_hex(row.owner_id))


@dataclass(frozen=True)
class JobState:
    """A job: one driver (a notebook kernel or a script) connected to the cluster.

    Attributes
    ----------
    job_id : str
        Hex id of the job (``rt.get_runtime_context().get_job_id()`` in that driver).
    driver_pid : int
        Process id of the driver.
    driver_host : str
        Machine the driver runs on.
    alive : bool
        False once the driver called ``shutdown``.
    start_time, end_time : float | None
        When it connected and disconnected.
    entrypoint : str
        What the driver runs, when it said.
    """

    job_id: str
    driver_pid: int
    driver_host: str
    alive: bool
    start_time: float | None
    end_time: float | None
    entrypoint: str

    @classmethod
    def from_row(cls, row: gcs_pb2.JobRow) -> JobState:
        """Build from a GCS ``jobs`` row."""
        return cls(job_id=row.job_id.hex(), driver_pid=row.driver_pid, driver_host=row.driver_host,
                   alive=row.alive, start_time=_when(row.start_time), end_time=_when(row.end_time),
                   entrypoint=row.entrypoint)


@dataclass(frozen=True)
class ActorState:
    """An actor and where it lives.

    Attributes
    ----------
    actor_id : str
        Hex id of the actor.
    class_name : str
        Name of the actor's class.
    name : str | None
        The name it was created with, None for an anonymous actor.
    namespace : str
        Namespace of the name.
    state : str
        PENDING, ALIVE, RESTARTING or DEAD.
    node_id : str | None
        Hex id of the node its process runs on.
    pid : int | None
        Process id of the actor's worker.
    num_restarts, max_restarts : int
        Restarts so far, and the most allowed (-1: forever).
    death_cause : str
        Why a DEAD actor died; "" otherwise.
    pending_calls : int
        Method calls submitted and not yet finished.
    job_id : str | None
        Hex id of the job that created it.
    detached : bool
        True when it outlives its creator.
    start_time : float | None
        When it was created.
    node_address : str
        ``host:port`` of its node manager.
    """

    actor_id: str
    class_name: str
    name: str | None
    namespace: str
    state: str
    node_id: str | None
    pid: int | None
    num_restarts: int
    max_restarts: int
    death_cause: str
    pending_calls: int
    job_id: str | None = None
    detached: bool = False
    start_time: float | None = None
    node_address: str = ""

    @classmethod
    def from_row(cls, row: gcs_pb2.ActorRow) -> ActorState:
        """Build from a GCS ``actors`` row."""
        return cls(actor_id=row.actor_id.hex(), class_name=row.class_name, name=row.name or None,
                   namespace=row.namespace, state=row.state, node_id=_hex(row.node_id),
                   pid=row.pid or None, num_restarts=row.num_restarts, max_restarts=row.max_restarts,
                   death_cause=row.death_cause, pending_calls=row.pending_calls,
                   job_id=_hex(row.job_id), detached=row.detached, start_time=_when(row.start_time),
                   node_address=row.node_address)


#: Any row this module returns.
Row = NodeState | JobState | TaskState | ObjectState | ActorState | SchedulerEvent

_DECODERS: dict[str, Callable[[bytes], Row]] = {
    "nodes": lambda raw: NodeState.from_row(gcs_pb2.NodeRow.FromString(raw)),
    "jobs": lambda raw: JobState.from_row(gcs_pb2.JobRow.FromString(raw)),
    "tasks": lambda raw: TaskState.from_row(gcs_pb2.TaskRow.FromString(raw)),
    "objects": lambda raw: ObjectState.from_row(gcs_pb2.ObjectRow.FromString(raw)),
    "actors": lambda raw: ActorState.from_row(gcs_pb2.ActorRow.FromString(raw)),
    "events": lambda raw: SchedulerEvent.from_proto(common_pb2.TaskEvent.FromString(raw)),
}


def decode_row(table: str, raw: bytes) -> Row:
    """The dataclass for one serialized row of a GCS ``table`` (one of ``TABLES``).

    Raises ``ValueError`` for another table, and protobuf's ``DecodeError`` for bytes that
    are not a row.

    Examples
    --------
    >>> decode_row("jobs", gcs_pb2.JobRow(job_id=b"\\x01\\0\\0\\0", alive=True).SerializeToString()).alive
    True
    """
    decoder = _DECODERS.get(table)
    if decoder is None:
        raise ValueError(f"no row type for table {table!r}; the state tables are {', '.join(TABLES)}")
    return decoder(raw)


@dataclass(frozen=True)
class OutputLines:
    """Lines a remote task printed, as they reach the driver at the root of its task tree.

    Attributes
    ----------
    task_id : str
        Hex id of the task that printed them.
    name : str
        The task's function name.
    pid : int
        Process id of the worker.
    stream : str
        "stdout" or "stderr".
    lines : tuple[str, ...]
        The lines, without their newlines.
    origin : str
        The origin tag of the task tree (see ``set_origin_provider``); "" when untagged.
    """

    task_id: str
    name: str
    pid: int
    stream: Literal["stdout", "stderr"]
    lines: tuple[str, ...]
    origin: str

    @property
    def text(self) -> str:
        """The lines joined, each ending with a newline."""
        return "".join(line + "\n" for line in self.lines)

    @classmethod
    def from_proto(cls, log: node_pb2.LogLines) -> OutputLines:
        """Build from the ``LogLines`` a node sends its driver."""
        return cls(task_id=log.task_id.hex(), name=log.name, pid=log.pid,
                   stream="stderr" if log.stderr else "stdout", lines=tuple(log.lines),
                   origin=log.origin)


# ---- queries -----------------------------------------------------------------------------


def _query(call: Callable[[GcsClient], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``call(gcs)`` on the current connection's IO loop and return its result."""
    client = _context.current()
    gcs = client.gcs
    if gcs is None or client.closed:
        raise ClientClosedError("This cluster connection was shut down. Call runtime.init() again.")
    return client.run(call(gcs), _QUERY_TIMEOUT_S)


def _values(table: str, limit: int = 0) -> list[bytes]:
    """The serialized rows of ``table`` (at most ``limit`` when > 0), in the GCS's order."""
    return [value for _, value in _query(lambda gcs: gcs.list_table(table, limit))]


def _task_rows() -> list[gcs_pb2.TaskRow]:
    # Filtering and sorting work on the messages: building dataclasses for every row of a
    # large table would cost more than the whole query.
    return [gcs_pb2.TaskRow.FromString(v) for v in _values("tasks")]


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None (no limit), got {limit!r}")


def list_nodes() -> list[NodeState]:
    """Every node the cluster has known, alive or dead, oldest first.

    Examples
    --------
    >>> [n.node_id[:8] for n in list_nodes() if n.alive]       # doctest: +SKIP
    ['5f1c0a2e']
    """
    nodes = [NodeState.from_row(gcs_pb2.NodeRow.FromString(v)) for v in _values("nodes")]
    return sorted(nodes, key=lambda n: (n.start_time or 0.0, n.node_id))


def list_tasks(*, state: str | None = None, job_id: str | None = None, name: str | None = None,
               limit: int | None = 1000) -> list[TaskState]:
    """Tasks the GCS holds, newest first (by submit time), optionally filtered.

    Parameters
    ----------
    state : str, optional
        Only tasks in this state ("RUNNING", "FAILED", ...; any case).
    job_id : str, optional
        Only tasks of this job (hex id, as ``rt.get_runtime_context().get_job_id()``).
    name : str, optional
        Only tasks of this function name.
    limit : int or None
        At most this many (the newest); None for all.

    Raises
    ------
    ValueError
        For a ``limit`` below 1, or a ``state`` that is neither a known task state nor the
        state of any task in the table (a typo would otherwise silently match nothing).

    Examples
    --------
    >>> [t.duration for t in list_tasks(state="FINISHED", limit=3)]   # doctest: +SKIP
    [0.0021, 0.0019, 0.0020]
    """
    _check_limit(limit)
    if job_id is not None:
        try:
            job = bytes.fromhex(job_id)
        except ValueError:
            raise ValueError(f"job_id must be a hex job id, got {job_id!r}") from None
    rows = _task_rows()
    if state is not None:
        state = state.upper()
        if state not in _KNOWN_TASK_STATES and all(r.state != state for r in rows):
            raise ValueError(f"unknown task state {state!r}; task states are "
                             f"{', '.join(_KNOWN_TASK_STATES)}")
        rows = [r for r in rows if r.state == state]
    if job_id is not None:
        rows = [r for r in rows if r.job_id == job]
    if name is not None:
        rows = [r for r in rows if r.name == name]
    rows.sort(key=lambda r: r.submit_time or r.start_time, reverse=True)
    return [TaskState.from_row(r) for r in (rows if limit is None else rows[:limit])]


def get_task(task_id: str | ObjectRef) -> TaskState | None:
    """The task with this hex id (or the task that produces this ObjectRef); None if unknown.

    Raises ``ValueError`` when ``task_id`` is not a hex task id.

    Examples
    --------
    >>> ref = f.remote(1)                       # doctest: +SKIP
    >>> get_task(ref).state                     # doctest: +SKIP
    'RUNNING'
    """
    if not isinstance(task_id, str):
        if not callable(getattr(task_id, "task_id", None)):
            raise TypeError(f"get_task() expects a hex task id or an ObjectRef, got {type(task_id).__name__}")
        task_id = task_id.task_id()  # an ObjectRef
    try:
        key = bytes.fromhex(task_id)
    except ValueError:
        key = b""
    if not key:
        raise ValueError(f"get_task() expects a task id as a hex string, got {task_id!r}")
    raw = _query(lambda gcs: gcs.get_entry("tasks", key))
    return None if raw is None else TaskState.from_row(gcs_pb2.TaskRow.FromString(raw))


def list_objects(limit: int | None = 1000) -> list[ObjectState]:
    """Objects in the nodes' shared-memory stores (at most ``limit``; None for all).

    Small objects travel inline and are not listed; see ``ObjectState``.
    """
    _check_limit(limit)
    return [ObjectState.from_row(gcs_pb2.ObjectRow.FromString(v)) for v in _values("objects", limit or 0)]


def list_jobs() -> list[JobState]:
    """Every job (driver) the cluster has known, oldest first, finished ones included."""
    jobs = [JobState.from_row(gcs_pb2.JobRow.FromString(v)) for v in _values("jobs")]
    return sorted(jobs, key=lambda j: (j.start_time or 0.0, j.job_id))


def list_actors(*, state: str | None = None) -> list[ActorState]:
    """Actors, oldest first; ``state`` ("ALIVE", "DEAD", ...; any case) keeps only those."""
    actors = [ActorState.from_row(gcs_pb2.ActorRow.FromString(v)) for v in _values("actors")]
    if state is not None:
        actors = [a for a in actors if a.state == state.upper()]
    return sorted(actors, key=lambda a: (a.start_time or 0.0, a.actor_id))


def list_events(limit: int | None = 100) -> list[SchedulerEvent]:
    """The latest scheduler decisions (SCHEDULED, SPILLED, INFEASIBLE), newest last.

    The GCS keeps a bounded ring of them (10 000 by default); ``limit`` keeps the newest
    few of those (None: all).
    """
    _check_limit(limit)
    values = _values("events")  # oldest first: the keys are sequence numbers
    if limit is not None:
        values = values[-limit:]
    return [SchedulerEvent.from_proto(common_pb2.TaskEvent.FromString(v)) for v in values]


@overload
def summarize_tasks(by: Literal["state"] = "state") -> dict[str, int]: ...
@overload
def summarize_tasks(by: Literal["name"]) -> dict[str, dict[str, int]]: ...


def summarize_tasks(by: str = "state") -> dict[str, int] | dict[str, dict[str, int]]:
    """How many tasks the GCS holds in each state, or per function name and state.

    Parameters
    ----------
    by : {"state", "name"}
        "state": ``{state: count}``. "name": ``{name: {state: count}}``.

    Examples
    --------
    >>> summarize_tasks()                        # doctest: +SKIP
    {'FINISHED': 8, 'FAILED': 1, 'RUNNING': 2}
    >>> summarize_tasks(by="name")               # doctest: +SKIP
    {'square': {'FINISHED': 8, 'RUNNING': 2}, 'boom': {'FAILED': 1}}
    """
    if by not in ("state", "name"):
        raise ValueError(f'summarize_tasks(by=...) takes "state" or "name", got {by!r}')
    rows = _task_rows()
    if by == "state":
        return dict(Counter(r.state for r in rows))
    per_name: dict[str, Counter[str]] = {}
    for r in rows:
        per_name.setdefault(r.name, Counter())[r.state] += 1
    return {name: dict(counts) for name, counts in per_name.items()}


# ---- subscriptions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One message of a subscription: a row written or deleted, or a marker.

    Attributes
    ----------
    table : str
        The row's table, or "" for a marker.
    key : str
        Hex key of the row (the id of its node, task, object, job or actor; for "events", a
        sequence number); "" for a marker.
    value : Row | None
        The row after the change, as a dataclass; None when the row was deleted, and for
        markers.
    snapshot : bool
        True for rows of the snapshot that starts every subscription (they are the state
        as it was, not changes).
    snapshot_done : bool
        The marker after the snapshot: what follows are changes, as they happen.
    reset : bool
        The marker sent before a fresh snapshot when the subscription had to start over
        (it fell behind, or the GCS connection broke): forget every row you know.
    """

    table: str
    key: str
    value: Row | None
    snapshot: bool = False
    snapshot_done: bool = False
    reset: bool = False

    @property
    def deleted(self) -> bool:
        """True when this change deletes the row ``key`` of ``table``."""
        return bool(self.table) and self.value is None


def _change_of(msg: gcs_pb2.PubMessage) -> Change:
    if msg.snapshot_done:
        return Change("", "", None, snapshot_done=True)
    value = None if msg.deleted else decode_row(msg.table, msg.value)
    return Change(msg.table, msg.key.hex(), value, snapshot=msg.snapshot)


#: Resubscription backoff: first delay, longest delay (seconds; jittered).
_RETRY_MIN_S, _RETRY_MAX_S = 0.1, 5.0
#: How often the delivery thread checks, while idle, whether the connection was shut down.
_IDLE_CHECK_S = 0.5


class Subscription:
    """A live subscription returned by ``subscribe``; ``close()`` ends it.

    A task on the connection's IO loop reads the GCS stream and queues each ``Change``;
    the subscription's own thread calls the callback with them, in order, one at a time.
    When ``max_pending`` changes wait, the task stops reading until the callback catches
    up (the GCS buffers meanwhile, and disconnects a subscriber that falls too far behind:
    then the subscription starts over). ``runtime.shutdown()`` ends every subscription of
    the connection. Also a context manager: ``with subscribe(...) as sub:`` closes on exit.

    Attributes
    ----------
    tables : tuple[str, ...]
        The tables subscribed to.
    restarts : int
        How many times the subscription started over with a fresh snapshot.
    """

    def __init__(self, client: CoreClient, tables: tuple[str, ...], callback: Callable[[Change], object],
                 max_pending: int) -> None:
        self.tables = tables
        self.restarts = 0
        self._client = client
        self._callback = callback
        self._max_pending = max_pending
        #: What the reader passes to the delivery thread: GCS messages (decoded there, off
        #: the IO loop), reset markers, and None to stop.
        self._queue: queue.SimpleQueue[gcs_pb2.PubMessage | Change | None] = queue.SimpleQueue()
        self._task: asyncio.Task[None] | None = None
        #: Set (on the IO loop) when the delivery thread made room in a full queue.
        self._room: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._want_room = False
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._deliver, daemon=True,
                                        name=f"cellray-subscription-{'-'.join(tables)}")

    def _start(self) -> None:
        async def spawn() -> asyncio.Task[None]:
            return asyncio.get_running_loop().create_task(self._pump(), name=self._thread.name)

        self._thread.start()
        try:
            self._task = self._client.run(spawn(), 10.0)
        except BaseException:
            self._queue.put(None)
            self._thread.join()
            raise

    @property
    def active(self) -> bool:
        """True until the subscription ended (closed, or its connection shut down)."""
        return self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """End the subscription; return once no callback runs and none will.

        Safe to call twice, after ``runtime.shutdown()``, and from the callback itself (then
        it returns at once and no further change is delivered).
        """
        with self._lock:
            first, self._closing = not self._closing, True
        task, client = self._task, self._client
        if first and task is not None and not task.done():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is task.get_loop():  # called on the IO thread (from a handler)
                task.cancel()
            elif not client.closed:
                async def stop() -> None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

                try:
                    client.run(stop(), timeout)
                except Exception as e:  # the connection went down meanwhile: nothing to stop
                    logger.debug("stopping %r: %s", self, e)
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "active" if self.active else "closed"
        return f"<Subscription to {', '.join(self.tables)} ({state}, {self.restarts} restarts)>"

    # ---- on the IO loop ----

    async def _pump(self) -> None:
        """Read the GCS stream into the queue; start over when it breaks."""
        gcs = self._client.gcs
        assert gcs is not None
        self._room, self._loop = asyncio.Event(), asyncio.get_running_loop()
        delay = _RETRY_MIN_S
        try:
            while True:
                try:
                    async with contextlib.aclosing(gcs.subscribe(self.tables)) as stream:
                        async for msg in stream:
                            if msg.snapshot_done:
                                delay = _RETRY_MIN_S  # a full snapshot came through: healthy again
                            await self._offer(msg)
                    why = "the GCS ended the stream"
                except ClientClosedError:
                    return  # the connection was shut down
                except Exception as e:  # ConnectionLostError (incl. RESOURCE_EXHAUSTED), ...
                    if self._client.closed:
                        return
                    why = str(e)
                if self._client.closed:
                    return
                logger.warning("subscription to %s starts over in %.1f s with a fresh snapshot: %s",
                               ", ".join(self.tables), delay, why)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, _RETRY_MAX_S)
                self.restarts += 1
                self._queue.put(Change("", "", None, reset=True))
        finally:
            self._queue.put(None)

    async def _offer(self, msg: gcs_pb2.PubMessage) -> None:
        room = self._room
        assert room is not None
        while self._queue.qsize() >= self._max_pending:
            room.clear()
            self._want_room = True
            if self._queue.qsize() < self._max_pending:  # the callback caught up meanwhile
                break
            await room.wait()
        self._queue.put(msg)

    # ---- on the delivery thread ----

    def _deliver(self) -> None:
        get, callback = self._queue.get, self._callback
        while True:
            try:
                item = get(timeout=_IDLE_CHECK_S)
            except queue.Empty:
                if self._client.closed:  # shut down under us, before the reader could say so
                    return
                continue
            if self._want_room:
                self._want_room = False
                self._make_room()
            if item is None or self._closing:
                return
            try:
                change = item if isinstance(item, Change) else _change_of(item)
            except Exception:  # a row this version cannot read: skip it, keep the rest
                logger.exception("subscription to %s could not decode a row of %r",
                                 ", ".join(self.tables), getattr(item, "table", "?"))
                continue
            try:
                callback(change)
            except Exception:
                logger.exception("subscription callback %r failed on a change of %r (key %s); "
                                 "the subscription goes on", callback, change.table, change.key)

    def _make_room(self) -> None:
        loop, room = self._loop, self._room
        if loop is not None and room is not None:
            with contextlib.suppress(RuntimeError):  # the loop was closed under us
                loop.call_soon_threadsafe(room.set)


def subscribe(tables: Sequence[str], callback: Callable[[Change], object], *,
              max_pending: int = 10_000) -> Subscription:
    """Call ``callback`` with every row of ``tables``, then with every change, until closed.

    The callback first receives each row of the tables as they are (``snapshot=True``),
    then one marker ``Change(table="", snapshot_done=True)``, then each change as the GCS
    applies it (a deleted row has ``value=None``). It runs on the subscription's own
    thread, one change at a time in order, so it may block briefly and may call the other
    functions of this module. An exception it raises is logged and the subscription goes on.

    When the callback is slower than the changes come, up to ``max_pending`` of them wait
    for it, then the GCS holds more (10 000 by default); a subscriber that falls further
    behind is disconnected by the GCS. Then, and whenever the GCS connection breaks, the
    subscription starts over by itself: the callback receives a
    ``Change(table="", reset=True)`` marker, then a fresh snapshot.

    Parameters
    ----------
    tables : sequence of str
        Any of "nodes", "jobs", "tasks", "objects", "actors", "events".
    callback : callable
        Called with each ``Change``.
    max_pending : int
        Changes that may wait for the callback in this process.

    Returns
    -------
    Subscription
        Call ``close()`` to stop (or use it in a ``with`` block).

    Raises
    ------
    ValueError
        For an unknown table or an empty list.
    RuntimeError
        When ``runtime.init()`` was not called.

    Examples
    --------
    >>> def show(change):
    ...     if change.table == "tasks" and change.value is not None:
    ...         print(change.value.name, change.value.state)
    >>> sub = subscribe(["tasks"], show)          # doctest: +SKIP
    >>> sub.close()                               # doctest: +SKIP
    """
    if isinstance(tables, str):
        tables = [tables]
    names = tuple(dict.fromkeys(tables))
    unknown = [t for t in names if t not in TABLES]
    if unknown or not names:
        raise ValueError(f"subscribe() takes one or more of the tables {', '.join(TABLES)}; "
                         f"got {list(tables)!r}")
    if not callable(callback):
        raise TypeError(f"subscribe() needs a callable callback, got {type(callback).__name__}")
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
        raise ValueError(f"max_pending must be a positive int, got {max_pending!r}")
    client = _context.current()
    if client.gcs is None or client.closed:
        raise ClientClosedError("This cluster connection was shut down. Call runtime.init() again.")
    sub = Subscription(client, names, callback, max_pending)
    sub._start()
    return sub


# ---- driver hooks ------------------------------------------------------------------------

#: Per connection: the adapters installed in ``client.log_handlers`` / ``event_handlers``,
#: keyed by the user's function (so ``remove_*`` finds them).
_output_adapters: weakref.WeakKeyDictionary[CoreClient, dict[Callable[..., Any], Any]] = \
    weakref.WeakKeyDictionary()
_event_adapters: weakref.WeakKeyDictionary[CoreClient, dict[Callable[..., Any], Any]] = \
    weakref.WeakKeyDictionary()
_hooks_lock = threading.Lock()


def add_output_handler(fn: Callable[[OutputLines], object]) -> None:
    """Call ``fn(OutputLines)`` for the lines that tasks started by this driver print.

    The lines of every task in a task tree rooted at this driver arrive here, nested tasks
    included, each batch tagged with the tree's origin (see ``set_origin_provider``), as
    they are printed. ``fn`` runs on the connection's IO thread: it must return quickly and
    must not call ``runtime.get``, ``wait`` or this module's queries (hand the lines to
    another thread for anything slow). An exception it raises is logged.

    Adding the same ``fn`` twice has no effect. Handlers belong to the connection:
    ``runtime.shutdown()`` drops them. ``runtime.init(log_to_driver=False)`` turns off the
    default printing of the lines to this process's stdout and stderr.

    Examples
    --------
    >>> add_output_handler(lambda out: print(out.origin, out.text, end=""))  # doctest: +SKIP
    """
    _add_hook(fn, _output_adapters, "log_handlers", OutputLines.from_proto)


def remove_output_handler(fn: Callable[[OutputLines], object]) -> None:
    """Stop calling ``fn``; nothing happens when it was not added (or after shutdown)."""
    _remove_hook(fn, _output_adapters, "log_handlers")


def add_task_event_handler(fn: Callable[[SchedulerEvent], object]) -> None:
    """Call ``fn(SchedulerEvent)`` for each task warning the cluster sends this driver.

    An INFEASIBLE event says a task needs more resources than any node has (it waits until
    such a node joins). Runs on the connection's IO thread, like ``add_output_handler``'s
    handlers; adding ``fn`` twice has no effect; ``shutdown`` drops it.
    """
    _add_hook(fn, _event_adapters, "event_handlers", SchedulerEvent.from_proto)


def remove_task_event_handler(fn: Callable[[SchedulerEvent], object]) -> None:
    """Stop calling ``fn``; nothing happens when it was not added (or after shutdown)."""
    _remove_hook(fn, _event_adapters, "event_handlers")


def _add_hook(fn: Callable[[Any], object],
              registry: weakref.WeakKeyDictionary[CoreClient, dict[Callable[..., Any], Any]],
              attr: str, convert: Callable[[Any], Any]) -> None:
    if not callable(fn):
        raise TypeError(f"expected a callable handler, got {type(fn).__name__}")
    client = _context.current()

    def adapter(message: Any) -> None:
        fn(convert(message))

    with _hooks_lock:
        adapters = registry.setdefault(client, {})
        if fn in adapters:
            return
        adapters[fn] = adapter
        # Copy on write: the IO thread may be iterating the current list right now.
        setattr(client, attr, [*getattr(client, attr), adapter])


def _remove_hook(fn: Callable[[Any], object],
                 registry: weakref.WeakKeyDictionary[CoreClient, dict[Callable[..., Any], Any]],
                 attr: str) -> None:
    client = _context.peek()
    if client is None:
        return
    with _hooks_lock:
        adapter = registry.get(client, {}).pop(fn, None)
        if adapter is not None:
            setattr(client, attr, [h for h in getattr(client, attr) if h is not adapter])


def set_origin_provider(fn: Callable[[], str] | None) -> None:
    """Tag the work this driver submits with ``fn()``'s string, so its output finds its way back.

    ``fn`` is called once for each task submitted from the driver (not from inside
    tasks); the task, every task it submits in turn, and every ``OutputLines`` they print
    carry the string as ``origin``. This is how a notebook routes a task's output to the
    cell that started the work, even when it prints after the cell finished: the
    extension returns the id of the executing cell, and its output handler (see
    ``add_output_handler``) writes each batch of lines into the cell named by
    ``origin``. ``None`` removes the provider. ``fn`` runs on the submitting thread; an
    exception it raises is logged and the task goes untagged.

    Examples
    --------
    >>> set_origin_provider(lambda: current_cell_id())   # doctest: +SKIP
    """
    if fn is not None and not callable(fn):
        raise TypeError(f"set_origin_provider() expects a callable or None, got {type(fn).__name__}")
    _context.current().origin_provider = fn
