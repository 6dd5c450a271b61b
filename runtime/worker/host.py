"""The worker's side of its client: what a worker does that a driver does not.

``WorkerHost`` implements ``runtime.api._host.Host``. The node's ``execute`` ops queue
here for the worker's main loop; while a task waits (``get`` without a deadline) the
worker tells the node it blocks, lending its CPU, and runs the tasks the node then sends
on the waiting task's stack. A cancel goes to the executor; when the session to the node
breaks the process exits, since a worker without its node has nothing to do.
"""

from __future__ import annotations

import os
import queue
from typing import TYPE_CHECKING

from runtime.protocol import common_pb2, node_pb2

if TYPE_CHECKING:
    from runtime.api._client import CoreClient
    from runtime.worker.executor import Executor


class WorkerHost:
    """A worker process's ``Host``: tasks, blocking, cancels, GPUs, exit with the node."""

    kind = "worker"
    shows_progress = False

    def __init__(self, client: CoreClient, executor: Executor, worker_id: bytes) -> None:
        self._client = client
        self._executor = executor
        self.worker_id = worker_id
        #: Tasks the node gave this worker (read by the worker's main thread).
        self.tasks: queue.SimpleQueue[node_pb2.NodeOp] = queue.SimpleQueue()

    def lends_while_waiting(self, timed: bool) -> bool:
        # Tasks run on the waiting one's stack, where no deadline can interrupt them: only
        # without one. An actor's process runs no nested tasks. Only a task's own thread
        # lends: a thread the task started has an empty task stack, no CPU of its own to
        # lend, and the node would not hear that it blocks (set_blocked needs the task).
        return not timed and self._executor.actor is None and bool(self._client.task_stack)

    def set_blocked(self, blocked: bool, waiting_on: list[bytes]) -> None:
        stack = self._client.task_stack
        if not stack:
            return
        op = node_pb2.ClientOp()
        op.blocked.blocked = blocked
        op.blocked.task_id = stack[-1].task_id
        op.blocked.waiting_on.extend(waiting_on)
        self._client.send(op)

    def has_pending(self) -> bool:
        return not self.tasks.empty()

    def run_pending(self) -> None:
        try:
            op = self.tasks.get_nowait()
        except queue.Empty:
            return
        self._executor.run_one(op.execute)

    def on_execute(self, op: node_pb2.NodeOp) -> None:
        self.tasks.put(op)

    def on_cancel(self, cancel: node_pb2.CancelTask) -> None:
        self._executor.cancel(cancel)

    def gpu_ids(self) -> list[int]:
        return self._executor.current_gpu_ids()

    def is_cancelled(self, task_id: bytes) -> bool:
        return self._executor.is_cancelled(task_id)

    def actor_restarts(self) -> int:
        return self._executor.actor_restarts

    def current_actor(self) -> tuple[common_pb2.TaskSpec, type] | None:
        return self._executor.current_actor()

    def on_broken(self, error: BaseException) -> None:
        os._exit(1)  # a worker without its node has nothing to do
