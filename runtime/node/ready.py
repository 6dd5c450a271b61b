"""Ready tasks and the decision of which one starts on which worker. Pure, a part of the
local scheduler.

Ready tasks wait in one FIFO per resource shape, so a shape that does not fit now never
blocks another. A task starts when its resources fit what is available: in a blocked
worker that waits for it (or whose innermost task submitted it, see ``lending.py``), or
in an idle worker; when none is free, workers are started (at most ``max_starting`` at
once). A task that does not fit now may be *sent ahead* to a busy worker running the same
function with the same shape (pipelining): it starts there, on the resources of the task
before it, as soon as that one ends.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping

from runtime.node.actions import Action, Send, StartWorker
from runtime.node.lending import Lending
from runtime.node.objects import ObjectTable
from runtime.node.resources import Resources
from runtime.node.tasks import Phase, Task, TaskHost
from runtime.node.workers import Frame, Worker, WorkerTable
from runtime.protocol import node_pb2
from runtime.protocol.states import TaskState, WorkerState

Shape = tuple[tuple[str, float], ...]

# Members bound once: reading an enum member costs ~80 ns on Python 3.11, and these are
# read on the path of every task.
_READY = Phase.READY
_RUNNING = Phase.RUNNING
_BUSY = WorkerState.BUSY
_RUN_EVENT = TaskState.RUNNING


class ReadyQueues:
    """The ready tasks of the node, and starting them (see the module docstring)."""

    __slots__ = ("_emit", "_host", "_is_forwarded", "_lending", "_objects", "_resources", "_stats",
                 "_workers", "queues")

    def __init__(self, host: TaskHost, resources: Resources, workers: WorkerTable,
                 lending: Lending, objects: ObjectTable, is_forwarded: Callable[[bytes], bool],
                 emit: Callable[[Action], None], stats: Counter[str]) -> None:
        self._host = host
        self._resources = resources
        self._workers = workers
        self._lending = lending
        self._objects = objects
        self._is_forwarded = is_forwarded
        self._emit = emit
        #: The node's counters (``dispatched``, ``local``), shared with the coordinator.
        self._stats = stats
        #: Ready tasks, FIFO per resource shape so one shape never blocks another.
        self.queues: dict[Shape, deque[Task]] = {}

    def push(self, task: Task) -> None:
        task.phase = _READY
        shape = tuple(sorted(task.resources.items()))
        q = self.queues.get(shape)
        if q is None:
            q = self.queues[shape] = deque()
        q.append(task)

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def schedule(self) -> None:
        """Start every ready task that can start now; ask for workers that are missing."""
        want = 0  # tasks that fit now but have no worker: how many workers to start
        resources = self._resources
        for queue in self.queues.values():
            while queue:
                task = queue[0]
                if task.phase != _READY:
                    queue.popleft()
                    continue
                need = task.resources
                if not resources.can_run(need):
                    spec = task.spec
                    if need.get("GPU") or spec.actor_id:
                        break  # only plain CPU tasks are sent ahead
                    ahead = self._workers.pipeline_worker(need, spec.function_id, self._function_of)
                    if ahead is None:
                        break
                    queue.popleft()
                    self.dispatch(task, ahead, ahead=True)
                    continue
                worker = self._worker_for(task)
                if worker is None:
                    want += resources.how_many_fit(need, len(queue))
                    break
                queue.popleft()
                self.dispatch(task, worker)
        workers = self._workers
        for _ in range(min(want, workers.max_starting) - workers.starting):
            # The I/O side calls worker_starting() with the new worker's id.
            self._emit(StartWorker())
            workers.asked()

    def _function_of(self, task_id: bytes) -> bytes | None:
        task = self._host.tasks.get(task_id)
        return task.spec.function_id if task is not None else None

    def _worker_for(self, task: Task) -> Worker | None:
        spec = task.spec
        w = self._lending.inline_host(spec.task_id, spec.parent_task_id, self._workers)
        return w if w is not None else self._workers.pop_idle()

    def run_inline(self, w: Worker, children: Mapping[bytes, set[bytes]]) -> None:
        """Give a blocked worker a ready task of its own (see ``lending.py``)."""
        tasks = self._host.tasks
        for tid in self._lending.inline_candidates(w, children):
            task = tasks.get(tid)
            if task is not None and task.phase == _READY and self._resources.can_run(task.resources):
                self.dispatch(task, w)
                return

    def dispatch(self, task: Task, worker: Worker, ahead: bool = False) -> None:
        """Send ``task`` to ``worker`` (``ahead``: to start after its running task)."""
        spec = task.spec
        if ahead:  # resources come from the task before it on that worker
            frame = Frame(spec.task_id, {})
            worker.queued.append(frame)
        else:
            worker.state = _BUSY
            frame = Frame(spec.task_id, task.resources,
                          gpu_ids=self._resources.acquire(task.resources))
            worker.frames.append(frame)
        task.phase = _RUNNING
        task.worker_id = worker.worker_id
        self._workers.running_on[spec.task_id] = worker.worker_id
        op = node_pb2.NodeOp()
        ex = op.execute
        ex.spec.CopyFrom(spec)
        ex.gpu_ids.extend(frame.gpu_ids)
        fill = self._objects.fill
        for oid in spec.arg_refs:
            if fill(ex.args.add(), oid, pin=True):
                task.pinned.append(oid)
        stats = self._stats
        stats["dispatched"] += 1
        if not self._is_forwarded(spec.task_id):
            stats["local"] += 1
        self._emit(Send(worker.client_id, op))
        self._host.event(task, _RUN_EVENT, worker_pid=worker.pid)

    def release(self, frame: Frame) -> None:
        """``frame``'s task ended (or its worker died): its resources are free again."""
        self._resources.release(frame.resources, frame.gpu_ids, frame.lent)
        if frame.gpu_ids:
            frame.gpu_ids = []
        if frame.lent:  # the CPUs were already given back while it was blocked
            frame.lent = 0.0
