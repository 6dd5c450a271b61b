"""What a process does around its client: the driver's default, or the worker's.

``CoreClient`` is the driver's connection to its node. A worker process uses the same
client and installs a :class:`Host` of its own (``runtime.worker.host.WorkerHost``)
for what only a worker does: run the tasks the node sends it (also nested, on top of a
task that waits for their results), lend its CPU while a task blocks, interrupt a task
being cancelled, know the GPUs reserved for the running task, and exit when its node
goes. ``runtime.api`` never imports ``runtime.worker``: the interface lives here.
"""

from __future__ import annotations

import logging
from typing import Protocol

from runtime.protocol import common_pb2, node_pb2

logger = logging.getLogger(__name__)


class Host(Protocol):
    """The part of a process's behaviour that differs between a driver and a worker.

    ``on_execute``, ``on_cancel`` and ``on_broken`` are called on the client's IO thread
    and must not block; the others on the thread that waits.
    """

    #: The session's kind, sent in its Hello: ``"driver"`` or ``"worker"``.
    kind: str
    #: The node's id for this worker process (empty for a driver).
    worker_id: bytes
    #: Whether ``get`` of many refs in the main thread may show a progress hook (a notebook).
    shows_progress: bool

    def lends_while_waiting(self, timed: bool) -> bool:
        """Whether a wait (``timed`` when it has a deadline) lends this process's CPU and runs
        the tasks it waits for on its own stack."""
        ...

    def set_blocked(self, blocked: bool, waiting_on: list[bytes]) -> None:
        """Tell the node the running task blocks (or runs again); only when it lends."""
        ...

    def has_pending(self) -> bool:
        """Whether the node sent a task that ``run_pending`` would run (cheap, non-blocking)."""
        ...

    def run_pending(self) -> None:
        """Run one task the node sent, on the stack of the task that waits."""
        ...

    def on_execute(self, op: node_pb2.NodeOp) -> None:
        """The node sent a task to run (an ``execute`` op)."""
        ...

    def on_cancel(self, cancel: node_pb2.CancelTask) -> None:
        """The node asks to cancel a task running or queued here."""
        ...

    def gpu_ids(self) -> list[int]:
        """GPU indices reserved for the task or actor running in the caller."""
        ...

    def is_cancelled(self, task_id: bytes) -> bool:
        """Whether a cancel of task ``task_id``, running here, was asked."""
        ...

    def actor_restarts(self) -> int:
        """How many times the actor of this process was restarted (0: none, or no actor)."""
        ...

    def current_actor(self) -> tuple[common_pb2.TaskSpec, type] | None:
        """The creation spec and class of the actor this process runs (None: no actor)."""
        ...

    def on_broken(self, error: BaseException) -> None:
        """The session to the node broke (``error`` says how); the client raises it next."""
        ...


class DriverHost:
    """A driver's host: it runs no tasks, has no GPUs, and reports a broken session.

    Calls to the client after the session broke raise ``ConnectionLostError``.
    """

    kind = "driver"
    worker_id = b""
    shows_progress = True

    def lends_while_waiting(self, timed: bool) -> bool:
        return False

    def set_blocked(self, blocked: bool, waiting_on: list[bytes]) -> None:
        return None

    def has_pending(self) -> bool:
        return False

    def run_pending(self) -> None:
        return None

    def on_execute(self, op: node_pb2.NodeOp) -> None:
        logger.warning("the node sent task %s to a driver; ignored", op.execute.spec.name)

    def on_cancel(self, cancel: node_pb2.CancelTask) -> None:
        return None

    def gpu_ids(self) -> list[int]:
        return []

    def is_cancelled(self, task_id: bytes) -> bool:
        return False

    def actor_restarts(self) -> int:
        return 0

    def current_actor(self) -> tuple[common_pb2.TaskSpec, type] | None:
        return None

    def on_broken(self, error: BaseException) -> None:
        logger.debug("session to the node broke: %s", error)
