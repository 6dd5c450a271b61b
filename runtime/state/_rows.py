"""The rows of ``runtime.state``: the frozen dataclasses of the GCS tables, and ``decode_row``.

Each dataclass is built from its protobuf message (``from_row`` / ``from_proto``); ids
become hex strings and unset times None. Part of the ``runtime.state`` package: import
these names from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.protocol import common_pb2, gcs_pb2
from runtime.protocol.states import TERMINAL_TASK_STATES as TERMINAL_TASK_STATES  # runtime.state's
from runtime.state._groups import PlacementGroupState

#: Tables this module reads and subscribes to (the GCS's ``functions`` and ``kv`` hold
#: pickles and opaque bytes, not state).
TABLES = ("nodes", "jobs", "tasks", "objects", "actors", "events", "placement_groups")


def _hex(b: bytes) -> str | None:
    return b.hex() if b else None


def _when(t: float) -> float | None:
    return t if t > 0 else None


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
    store_spilled, store_spilled_total : int
        Bytes of the node's objects spilled to disk now, and spilled so far.
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
    store_spilled: int = 0
    store_spilled_total: int = 0

    @classmethod
    def from_row(cls, row: gcs_pb2.NodeRow) -> NodeState:
        """Build from a GCS ``nodes`` row."""
        load = row.load
        return cls(node_id=row.node_id.hex(), address=row.address, hostname=row.hostname,
                   alive=row.alive, resources_total=dict(load.total),
                   resources_available=dict(load.available), queue_length=load.queue_length,
                   store_used=load.store_used, store_capacity=load.store_capacity,
                   store_spilled=load.store_spilled, store_spilled_total=load.store_spilled_total,
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
Row = NodeState | JobState | TaskState | ObjectState | ActorState | SchedulerEvent | PlacementGroupState

_DECODERS: dict[str, Callable[[bytes], Row]] = {
    "nodes": lambda raw: NodeState.from_row(gcs_pb2.NodeRow.FromString(raw)),
    "jobs": lambda raw: JobState.from_row(gcs_pb2.JobRow.FromString(raw)),
    "tasks": lambda raw: TaskState.from_row(gcs_pb2.TaskRow.FromString(raw)),
    "objects": lambda raw: ObjectState.from_row(gcs_pb2.ObjectRow.FromString(raw)),
    "actors": lambda raw: ActorState.from_row(gcs_pb2.ActorRow.FromString(raw)),
    "events": lambda raw: SchedulerEvent.from_proto(common_pb2.TaskEvent.FromString(raw)),
    "placement_groups": lambda raw: PlacementGroupState.from_row(gcs_pb2.PlacementGroupRow.FromString(raw)),
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
