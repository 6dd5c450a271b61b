"""Ready tasks and the decision of which one starts on which worker. Pure, a part of the
local scheduler.

Ready tasks wait in one FIFO per resource shape, so a shape that does not fit now never
blocks another. A task starts when its resources fit what is available: in a blocked
worker that waits for it (or whose innermost task submitted it, see ``lending.py``), or
in an idle worker; when none is free, workers are started (at most ``max_starting`` at
once). A task that does not fit now may be *sent ahead* to a busy worker running the same
function with the same shape (pipelining): it starts there, on the resources of the task
before it, as soon as that one ends. Such a task is reported SENT_AHEAD when it is sent, and
RUNNING only when its worker begins to run it (``promote``, ``blocked``): the worker runs
what it was sent in order, so the node knows when that is without being told.

A task with a runtime env (``spec.runtime_env_key``) waits in a queue of its env and
shape, and runs only in a worker started for that env: idle, blocked and busy workers of
other envs are passed over, and the workers started for it are started with its env
(``StartWorker.runtime_env``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from runtime import _ids
from runtime.node.actions import Action, Send, StartWorker
from runtime.node.lending import Lending
from runtime.node.objects import ObjectTable
from runtime.node.resources import Resources
from runtime.node.tasks import Phase, Task, TaskHost
from runtime.node.workers import Frame, Worker, WorkerTable
from runtime.protocol import node_pb2
from runtime.protocol.states import TaskState

Shape = tuple[tuple[str, float], ...]

# Members bound once: reading an enum member costs ~80 ns on Python 3.11, and these are
# read on the path of every task.
_READY = Phase.READY
_RUNNING = Phase.RUNNING
_RUN_EVENT = TaskState.RUNNING
_AHEAD_EVENT = TaskState.SENT_AHEAD


class ReadyQueues:
    """The ready tasks of the node, and starting them (see the module docstring)."""

    __slots__ = ("_dispatched", "_emit", "_event", "_is_forwarded", "_lending", "_local", "_objects",
                 "_resources", "_task", "_workers", "queues")

    def __init__(self, host: TaskHost, resources: Resources, workers: WorkerTable,
                 lending: Lending, objects: ObjectTable, is_forwarded: Callable[[bytes], bool],
                 emit: Callable[[Action], None]) -> None:
        # The host's methods, bound once: they are called for every task.
        self._task = host.task
        self._event = host.event
        self._resources = resources
        self._workers = workers
        self._lending = lending
        self._objects = objects
        self._is_forwarded = is_forwarded
        self._emit = emit
        #: Tasks sent to a worker; those of them that were submitted here (not forwarded).
        self._dispatched = 0
        self._local = 0
        #: Ready tasks, FIFO per resource shape (and runtime env) so one shape (or env,
        #: waiting for its workers to start) never blocks another.
        self.queues: dict[Shape, deque[Task]] = {}

    def push(self, task: Task) -> None:
        task.phase = _READY
        shape = tuple(sorted(task.resources.items()))
        env = task.spec.runtime_env_key
        if env:
            shape = (*shape, (env, -1.0))  # no resource amount is negative: never a real shape
        q = self.queues.get(shape)
        if q is None:
            q = self.queues[shape] = deque()
        q.append(task)

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def counters(self) -> dict[str, int]:
        """This part's counters, for ``statistics()`` and the node's load."""
        return {"dispatched": self._dispatched, "local": self._local}

    def schedule(self) -> None:
        """Start every ready task that can start now; ask for workers that are missing."""
        want = 0  # tasks that fit now but have no worker: how many workers to start
        # The same for tasks with a runtime env: key -> (how many, the env's JSON).
        want_env: dict[str, tuple[int, str]] | None = None
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
                    ahead = self._workers.pipeline_worker(need, spec.function_id, self._function_of,
                                                          spec.runtime_env_key)
                    if ahead is None:
                        break
                    queue.popleft()
                    self.dispatch(task, ahead, ahead=True)
                    continue
                worker = self._worker_for(task)
                if worker is None:
                    key = task.spec.runtime_env_key
                    if not key:
                        want += resources.how_many_fit(need, len(queue))
                        break
                    want_env = want_env if want_env is not None else {}
                    n = want_env.get(key, (0, ""))[0] + resources.how_many_fit(need, len(queue))
                    want_env[key] = (n, task.spec.runtime_env)  # the queue holds this env only
                    break
                queue.popleft()
                self.dispatch(task, worker)
        if want:
            workers = self._workers
            for _ in range(workers.to_start(want)):
                # The I/O side calls worker_starting() with the new worker's id.
                self._emit(StartWorker())
                workers.asked()
        if want_env:
            self._start_for_envs(want_env)

    def _start_for_envs(self, want: dict[str, tuple[int, str]]) -> None:
        """Ask for workers of runtime envs: ``want`` maps an env key to (how many, env JSON)."""
        workers = self._workers
        for key, (n, text) in want.items():
            for _ in range(workers.to_start(n, key)):
                self._emit(StartWorker(env_key=key, runtime_env=text))
                workers.asked(key)

    def _function_of(self, task_id: bytes) -> bytes | None:
        task = self._task(task_id)
        return task.spec.function_id if task is not None else None

    def _worker_for(self, task: Task) -> Worker | None:
        spec = task.spec
        kind = "gpu" if task.resources.get("GPU") else "cpu"
        if not spec.actor_creation:  # an actor needs a process of its own, never a nested run
            w = self._lending.inline_host(spec.task_id, spec.parent_task_id)
            if (w is not None and w.kind in ("", kind) and not w.retiring
                    and w.env_key == spec.runtime_env_key):
                return w
        return self._workers.pop_idle(kind, spec.runtime_env_key)

    def blocked(self, w: Worker, state: node_pb2.BlockedState,
                children: Mapping[bytes, set[bytes]]) -> None:
        """``w`` blocks in a wait (or runs again): it lends its CPUs, and may run what it
        waits for, nested (``lending.py``)."""
        newly = self._lending.set_blocked(w, state.task_id, state.blocked)
        if newly is None:
            return  # it runs nothing
        if newly:
            self._ahead_started(w)  # the worker runs what it was sent ahead first, nested
            for oid in state.waiting_on:
                tid = _ids.task_of(oid)
                t = self._task(tid)
                if t is not None and t.phase in (_READY, Phase.WAITING):
                    self._lending.waits_for(tid, w.worker_id)
            self.run_inline(w, children)
        self.schedule()

    def run_inline(self, w: Worker, children: Mapping[bytes, set[bytes]]) -> None:
        """Give a blocked worker a ready task of its own (see ``lending.py``)."""
        get = self._task
        for tid in self._lending.inline_candidates(w, children):
            task = get(tid)
            if (task is not None and task.phase == _READY and self._resources.can_run(task.resources)
                    and not task.spec.actor_creation and task.spec.runtime_env_key == w.env_key
                    and w.kind in ("", "gpu" if task.resources.get("GPU") else "cpu")):
                self.dispatch(task, w)
                return

    def dispatch(self, task: Task, worker: Worker, ahead: bool = False) -> None:
        """Send ``task`` to ``worker`` (``ahead``: to start after its running task)."""
        spec = task.spec
        if not worker.kind:
            worker.kind = "gpu" if task.resources.get("GPU") else "cpu"
        if spec.max_calls:
            self._workers.count_call(worker, spec.function_id, spec.max_calls)
        if ahead:  # resources come from the task before it on that worker
            frame = self._workers.send_ahead(worker, spec.task_id)
        else:
            frame = self._workers.assign(worker, spec.task_id, task.resources,
                                         self._resources.acquire(task.resources))
        task.phase = _RUNNING
        task.worker_id = worker.worker_id
        op = node_pb2.NodeOp()
        ex = op.execute
        ex.spec.CopyFrom(spec)
        names = self._resources.gpu_ids
        ex.gpu_ids.extend(names[i] if i < len(names) else i for i in frame.gpu_ids)
        fill = self._objects.fill
        for oid in spec.arg_refs:
            if fill(ex.args.add(), oid, pin=True):
                task.pinned.append(oid)
        self._dispatched += 1
        if not self._is_forwarded(spec.task_id):
            self._local += 1
        self._emit(Send(worker.client_id, op))
        self._event(task, _AHEAD_EVENT if ahead else _RUN_EVENT, worker_pid=worker.pid)

    def promote(self, w: Worker, ended: Frame) -> bool:
        """The task of ``ended`` came off ``w``: the next task sent ahead starts on its
        resources (True, and it is RUNNING now), or nothing took them (False)."""
        nxt = self._workers.promote_next(w, ended)
        if nxt is None:
            self._ahead_started(w)  # a blocked stack runs the next one nested
            return False
        if not nxt.started:
            nxt.started = True
            self._running(w, nxt.task_id)
        return True

    def _ahead_started(self, w: Worker) -> None:
        """Report RUNNING the task sent ahead that ``w`` runs nested now, if any."""
        if w.queued:
            frame = self._workers.next_ahead_starts(w)
            if frame is not None:
                self._running(w, frame.task_id)

    def _running(self, w: Worker, task_id: bytes) -> None:
        task = self._task(task_id)
        if task is not None:
            self._event(task, _RUN_EVENT, worker_pid=w.pid)

    def release(self, frame: Frame) -> None:
        """``frame``'s task ended (or its worker died): its resources are free again (CPUs
        it lent while blocked were given back already)."""
        held, gpu_ids, lent = self._workers.release(frame)
        self._resources.release(held, gpu_ids, lent)
