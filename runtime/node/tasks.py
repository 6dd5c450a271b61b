"""A task as the node's local scheduler holds it, and the services its parts ask of it.

A task's *phase* is where it is inside this node (waiting for inputs, in a ready queue,
in a worker...): finer than, and not the same as, the :class:`TaskState` the node reports
in events. The parts of the local scheduler (actors, spilling) drive tasks through the
:class:`TaskHost` protocol, which the coordinator (``LocalScheduler``) implements: they
never see the coordinator itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from runtime import _ids
from runtime.exceptions import TaskCancelledError, WorkerCrashedError
from runtime.protocol import common_pb2, node_pb2
from runtime.protocol.states import TaskState


class Phase(StrEnum):
    """Where a task is on this node."""

    #: Some inputs are not here yet.
    WAITING = "WAITING"
    #: In a ready queue (dropped lazily from it when its phase changes).
    READY = "READY"
    #: Sent to a worker (or sent ahead to a busy one).
    RUNNING = "RUNNING"
    #: No node has the resources it needs: parked until one joins.
    INFEASIBLE = "INFEASIBLE"
    #: An actor call in its actor's queue.
    QUEUED = "QUEUED"
    #: Handed to a global scheduler to run on another node.
    SPILLED = "SPILLED"
    #: Failed while in a ready queue (the queue drops it when it reaches it).
    DONE = "DONE"


@dataclass(slots=True)
class Task:
    spec: common_pb2.TaskSpec
    resources: dict[str, float]
    missing: set[bytes]
    phase: Phase = Phase.WAITING
    worker_id: bytes = b""
    cancelled: bool = False
    force_cancelled: bool = False
    #: Shared-memory arguments pinned while a worker reads them.
    pinned: list[bytes] = field(default_factory=list)
    #: Times the memory monitor killed its worker here (counted apart from ``max_retries``).
    oom_kills: int = 0
    #: A streaming task's highest item sent so far (``streams.py``).
    streamed: int = 0


def error_returns(spec: common_pb2.TaskSpec, blob: bytes) -> list[common_pb2.ObjectData]:
    """Every return of ``spec`` set to the encoded error ``blob``."""
    return [common_pb2.ObjectData(object_id=_ids.object_id(spec.task_id, i), inline=blob,
                                  size=len(blob))
            for i in range(1, max(spec.num_returns, 0) + 1)]


def cancelled_error(spec: common_pb2.TaskSpec) -> TaskCancelledError:
    return TaskCancelledError(f"Task {spec.name}() (task {_ids.short(spec.task_id)}) was cancelled.",
                              task_id=spec.task_id.hex())


def crashed_error(spec: common_pb2.TaskSpec, pid: int, exit_code: int | None,
                  node_id: bytes) -> WorkerCrashedError:
    """The error of a task whose worker died with its retries spent."""
    return WorkerCrashedError(
        f"The worker running {spec.name}() (task {_ids.short(spec.task_id)}) died "
        f"unexpectedly: pid {pid}, exit code {exit_code}, node "
        f"{_ids.short(node_id)}. It was tried {spec.attempt + 1} time(s) "
        f"(max_retries={spec.max_retries}). Check the worker log in the session "
        f"directory's logs/ for a crash, or raise max_retries.")


def requeue(host: TaskHost, task: Task, detail: str = "", worker_pid: int = 0) -> None:
    """Queue ``task`` again after its worker died; ``detail`` (why it runs again) goes in a
    RETRYING event, none for a task that never started there."""
    host.unpin(task)
    if detail:
        host.event(task, TaskState.RETRYING, detail=detail, worker_pid=worker_pid)
    task.worker_id = b""
    host.make_ready(task)


class TaskHost(Protocol):
    """What the parts of the local scheduler may ask the coordinator to do with tasks."""

    def task(self, task_id: bytes) -> Task | None:
        """The task ``task_id`` while it is not over here, else None."""
        ...

    def add_task(self, spec: common_pb2.TaskSpec) -> Task:
        """Register ``spec`` as a task (no events, no references taken)."""
        ...

    def event(self, task: Task, state: TaskState, detail: str = "",
              worker_pid: int = 0) -> common_pb2.TaskEvent:
        """Report ``task`` in ``state`` to the GCS; the event may still be amended."""
        ...

    def make_ready(self, task: Task) -> None:
        """Queue a task whose inputs are all here (or spill it)."""
        ...

    def schedule(self) -> None:
        """Start what can start now."""
        ...

    def finish(self, task: Task, returns: Iterable[common_pb2.ObjectData], state: TaskState,
               detail: str = "", worker_pid: int = 0) -> None:
        """End ``task`` with ``returns`` (delivered to their owner or sent home)."""
        ...

    def fail(self, task: Task, error: BaseException, state: TaskState = TaskState.FAILED) -> None:
        """End ``task`` with ``error`` as the value of each of its returns."""
        ...

    def store_object(self, data: common_pb2.ObjectData) -> None:
        """Keep object ``data`` here and wake what waits for it."""
        ...

    def unpin(self, task: Task) -> None:
        """Unpin the shared-memory arguments ``task`` was reading."""
        ...

    def can_run(self, need: dict[str, float]) -> bool:
        """True when ``need`` fits the node's available resources now."""
        ...

    def queue_length(self) -> int:
        """Tasks waiting to start here."""
        ...

    def has_client(self, client_id: bytes) -> bool:
        """True when ``client_id`` is connected to this node."""
        ...

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        """Cancel task ``task_id`` (``force``: kill its worker; ``recursive``: its children too)."""
        ...

    def inputs_lost(self, task: Task, lost: list[bytes], node_id: bytes) -> None:
        """Our ``task`` did not run on node ``node_id``: its inputs ``lost`` were gone there."""
        ...

    def stream_item_home(self, req: node_pb2.ReportResultsRequest) -> None:
        """A node running our streaming task sent one of its items."""
        ...

    def object_lost(self, oid: bytes, why: str, where: bytes = b"") -> None:
        """Every copy of ``oid`` is gone (``where``: the node that held it): rebuild it from
        its lineage when it is read, or make it its ObjectLostError."""
        ...

    def ready_elsewhere(self, client_id: bytes, oid: bytes, node_id: bytes, size: int) -> None:
        """Tell ``client_id`` that ``oid`` (of ``size`` bytes) is ready on node ``node_id``."""
        ...
