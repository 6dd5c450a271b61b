"""The local scheduler: pure state of one node (tasks, workers, objects, references).

Events come in as method calls (a client submitted, a worker finished, a ref was
dropped); decisions go out as actions appended to ``outbox``, which the service carries
out. Nothing here touches sockets or processes. Shared-memory objects are handled through
a small ``Store`` protocol, so the state can be driven in tests with a fake store.

Resources: a task runs when its resources fit the node's available amounts; a worker that
blocks in ``get`` lends its CPUs back, and tasks it waits on are preferably run *inside*
that worker (nested, on its stack), so deep recursions of tasks need few processes.

References: every object has a count of holders: clients (drivers and workers) that hold
ObjectRefs to it, tasks that take it as an argument, and objects that contain it. The
object is freed when the count reaches zero.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime import _ids
from runtime.node.actors import Actor, ActorMixin
from runtime.node.lending import MAX_INLINE_DEPTH, LendingMixin
from runtime.node.objects import Obj, ObjectsMixin
from runtime.node.spill import FORWARD_LOG, Home, RemoteObject, SpillMixin
from runtime.protocol import common_pb2, node_pb2

# Actions (tuples, cheap to build): the service carries them out in order.
SEND = "send"            # (SEND, client_id, NodeOp)
START_WORKER = "start"   # (START_WORKER,)
KILL_WORKER = "kill"     # (KILL_WORKER, worker_id)
EVENT = "event"          # (EVENT, TaskEvent)
OBJECT = "object"        # (OBJECT, object_id, size, removed) for the GCS object table
WARN = "warn"            # (WARN, message) for the node's log

Action = tuple[Any, ...]

#: Most tasks sent ahead to one busy worker when more tasks wait than workers are free:
#: fewer, fuller messages per task, at the price of some imbalance between workers.
PIPELINE_DEPTH = 4


class Store(Protocol):
    """The part of the shared-memory store the state uses."""

    def seal(self, object_id: bytes, size: int) -> None: ...
    def locate(self, object_id: bytes) -> str: ...
    def pin(self, object_id: bytes) -> None: ...
    def unpin(self, object_id: bytes) -> None: ...
    def free(self, object_id: bytes) -> None: ...


#: Serializes node-made errors (cancelled, worker crashed) into codec bytes.
ErrorEncoder = Callable[[BaseException], bytes]


@dataclass(slots=True)
class Task:
    spec: common_pb2.TaskSpec
    resources: dict[str, float]
    missing: set[bytes]
    state: str = "WAITING"              # WAITING READY RUNNING INFEASIBLE
    worker_id: bytes = b""
    cancelled: bool = False
    force_cancelled: bool = False
    #: Shared-memory arguments pinned while a worker reads them.
    pinned: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class Frame:
    task_id: bytes
    resources: dict[str, float]
    blocked: bool = False
    lent: float = 0.0
    #: GPU indices reserved for the task (whole or a fraction of one GPU).
    gpu_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Worker:
    worker_id: bytes
    pid: int = 0
    client_id: bytes = b""
    state: str = "STARTING"            # STARTING IDLE BUSY DEAD
    frames: list[Frame] = field(default_factory=list)
    #: Tasks sent ahead to this busy worker (pipelined): they start, in order, when the
    #: running one ends, and take over its resources then.
    queued: deque[Frame] = field(default_factory=deque)
    #: When it last became idle (for reaping surplus idle workers).
    idle_since: float = 0.0


@dataclass(slots=True)
class Client:
    client_id: bytes
    kind: str
    pid: int
    worker_id: bytes = b""
    held: Counter[bytes] = field(default_factory=Counter)


def _fits(need: dict[str, float], avail: dict[str, float]) -> bool:
    for k, v in need.items():
        if v > avail.get(k, 0.0) + 1e-9:
            return False
    return True


class NodeState(ActorMixin, SpillMixin, ObjectsMixin, LendingMixin):
    """One node's tasks, workers, objects and references. See the module docstring."""

    def __init__(self, node_id: bytes, resources: dict[str, float], store: Store,
                 encode_error: ErrorEncoder, *, max_starting_workers: int = 0,
                 spill_threshold: int = 0, max_spills: int = 2,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        #: Total resources of this node.
        self.total = dict(resources)
        #: What running tasks have not taken (CPU lent by blocked workers is back here).
        self.available = dict(resources)
        #: Free fraction of each GPU, by index: fractions pack onto the lowest index first.
        self.gpu_free = [1.0] * int(resources.get("GPU", 0))
        self.store = store
        self.encode_error = encode_error
        self.clock = clock
        self.max_starting = max_starting_workers or max(2, int(resources.get("CPU", 1)))
        #: Decisions for the service, drained after each event.
        self.outbox: list[Action] = []
        self.tasks: dict[bytes, Task] = {}
        #: Ready tasks, FIFO per resource shape so one shape never blocks another.
        self.ready: dict[tuple[tuple[str, float], ...], deque[Task]] = {}
        self.infeasible: dict[bytes, Task] = {}
        self.workers: dict[bytes, Worker] = {}
        self.idle: list[Worker] = []
        self.starting = 0
        self.clients: dict[bytes, Client] = {}
        self.objects: dict[bytes, Obj] = {}
        self.refs: Counter[bytes] = Counter()
        self.dep_waiters: dict[bytes, list[Task]] = {}
        self.get_waiters: dict[bytes, list[bytes]] = {}
        #: task id -> worker id of a blocked worker waiting for that task's result.
        self.waited_by: dict[bytes, bytes] = {}
        #: task id -> worker running it (to find a blocked parent that can run its children).
        self.running_on: dict[bytes, bytes] = {}
        self.children: dict[bytes, set[bytes]] = {}
        self.actors: dict[bytes, Actor] = {}
        #: Queue length above which tasks that cannot start now spill to other nodes.
        self.spill_threshold = spill_threshold or max(4, 2 * int(resources.get("CPU", 1)))
        self.max_spills = max_spills
        self.peer_totals: dict[bytes, dict[str, float]] = {}
        self.has_schedulers = False
        self.remote_objects: dict[bytes, RemoteObject] = {}
        self.pulling: set[bytes] = set()
        self.forwarded: dict[bytes, Home] = {}
        self.spilled_to: dict[bytes, bytes] = {}
        self.remote_holds: dict[bytes, Counter[bytes]] = {}
        self.dead_peers: set[bytes] = set()
        #: Counters for heartbeats and `rt.state`.
        self.stats: Counter[str] = Counter()

    # ---- clients -------------------------------------------------------------------

    def connect(self, client_id: bytes, kind: str, pid: int, worker_id: bytes = b"") -> None:
        self.clients[client_id] = Client(client_id, kind, pid, worker_id)
        if kind == "worker":
            w = self.workers.get(worker_id)
            if w is None:  # a worker the pool did not start (should not happen): adopt it
                w = self.workers[worker_id] = Worker(worker_id)
            elif w.state == "STARTING":
                self.starting -= 1
            w.pid, w.client_id, w.state = pid, client_id, "IDLE"
            w.idle_since = self.clock()
            self.idle.append(w)
            self._schedule()

    def disconnect(self, client_id: bytes) -> None:
        client = self.clients.pop(client_id, None)
        if client is None:
            return
        for object_id, n in client.held.items():
            self._decref(object_id, n)
        if client.kind == "driver":
            self._owner_gone(client_id, client.pid)

    # ---- workers -------------------------------------------------------------------

    def worker_starting(self, worker_id: bytes, counted: bool = True) -> None:
        """The pool started ``worker_id``; ``counted`` when a START_WORKER action asked for it."""
        self.workers[worker_id] = Worker(worker_id)
        if not counted:
            self.starting += 1

    def worker_exited(self, worker_id: bytes, exit_code: int | None) -> None:
        w = self.workers.pop(worker_id, None)
        if w is None or w.state == "DEAD":
            return
        if w.state == "STARTING":
            self.starting -= 1
        if w in self.idle:
            self.idle.remove(w)
        was_actor = w.state == "ACTOR"
        if was_actor:
            self._actor_worker_died(w, exit_code)
        w.state = "DEAD"
        for frame in w.queued:  # sent ahead, never started: simply queue them again
            task = self.tasks.get(frame.task_id)
            if task is not None and not task.cancelled:
                self._unpin(task)
                task.worker_id = b""
                self._make_ready(task)
            elif task is not None:
                self._fail(task, self._cancelled_error(task))
        w.queued.clear()
        for frame in reversed(w.frames):
            self._release(frame)
            if was_actor:
                # The frame of the creation that made this worker an actor: it only held the
                # actor's resources. Its task id is the restarted creation's now (queued by
                # _actor_worker_died above), which must not be failed as if it ran here.
                continue
            task = self.tasks.get(frame.task_id)
            if task is None:
                continue
            spec = task.spec
            if spec.actor_creation:  # the constructor's process died: the actor's restarts decide
                self._finish(task, [], "FAILED", f"worker pid {w.pid} died")
                actor = self.actors.get(spec.actor_id)
                if actor is not None:
                    actor.worker_id = w.worker_id
                    self._actor_worker_died(w, exit_code)
            elif task.cancelled:
                self._fail(task, self._cancelled_error(task), "CANCELLED")
            elif spec.max_retries < 0 or spec.attempt < spec.max_retries:
                spec.attempt += 1
                self._unpin(task)
                self._event(task, "RETRYING", detail=f"worker pid {w.pid} died (exit code {exit_code})",
                            worker_pid=w.pid)
                task.worker_id = b""
                self._make_ready(task)
            else:
                from runtime.exceptions import WorkerCrashedError
                err = WorkerCrashedError(
                    f"The worker running {spec.name}() (task {_ids.short(spec.task_id)}) died "
                    f"unexpectedly: pid {w.pid}, exit code {exit_code}, node "
                    f"{_ids.short(self.node_id)}. It was tried {spec.attempt + 1} time(s) "
                    f"(max_retries={spec.max_retries}). Check the worker log in the session "
                    f"directory's logs/ for a crash, or raise max_retries.")
                self._fail(task, err)
        w.frames.clear()
        self._schedule()

    # ---- tasks ---------------------------------------------------------------------

    def submit(self, client_id: bytes, spec: common_pb2.TaskSpec) -> None:
        client = self.clients.get(client_id)
        task_id = spec.task_id
        for i in range(1, spec.num_returns + 1):
            oid = _ids.object_id(task_id, i)
            self.refs[oid] += 1
            if client is not None:
                client.held[oid] += 1
        for oid in spec.arg_refs:
            self.refs[oid] += 1
        for oid in spec.nested_refs:
            self.refs[oid] += 1
        resources = dict(spec.resources)
        task = Task(spec, resources, set())
        self.tasks[task_id] = task
        if spec.parent_task_id:
            self.children.setdefault(spec.parent_task_id, set()).add(task_id)
        self.stats["submitted"] += 1
        self._event(task, "SUBMITTED")
        if spec.actor_id and not spec.actor_creation:
            for oid in spec.arg_refs:
                if oid not in self.objects:
                    task.missing.add(oid)
                    self.dep_waiters.setdefault(oid, []).append(task)
            self._actor_call_submit(task)
            return
        if spec.actor_creation:
            self._actor_created_submit(task)
        fits_here = _fits(resources, self.total)
        if not fits_here and not any(_fits(resources, t) for t in self.peer_totals.values()):
            need = ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items()))
            have = ", ".join(f"{k}: {v:g}" for k, v in sorted(self.total.items()))
            msg = (f"Task {spec.name}() needs {{{need}}} but no node has that much (this node has "
                   f"{{{have}}}). It will wait until a node that fits it joins the cluster.")
            self._event(task, "INFEASIBLE", detail=msg)
            self._send_event(spec.owner_id, task, "INFEASIBLE", msg)
            if not self.has_schedulers or spec.actor_id:
                task.state = "INFEASIBLE"
                self.infeasible[task_id] = task
                return
        for oid in spec.arg_refs:
            if oid not in self.objects:
                task.missing.add(oid)
                self.dep_waiters.setdefault(oid, []).append(task)
                self._want(oid)
        if task.missing:
            return
        self._make_ready(task)
        self._schedule()

    def _make_ready(self, task: Task) -> None:
        reason = self._spill_reason(task)
        if reason is not None:
            self._spill(task, reason)
            return
        task.state = "READY"
        shape = tuple(sorted(task.resources.items()))
        q = self.ready.get(shape)
        if q is None:
            q = self.ready[shape] = deque()
        q.append(task)

    def _schedule(self) -> None:
        want = 0  # tasks that fit now but have no worker: how many workers to start
        for queue in self.ready.values():
            while queue:
                task = queue[0]
                if task.state != "READY":
                    queue.popleft()
                    continue
                if not self._can_run(task.resources):
                    ahead = self._pipeline_worker(task)
                    if ahead is None:
                        break
                    queue.popleft()
                    self._dispatch(task, ahead, ahead=True)
                    continue
                worker = self._worker_for(task)
                if worker is None:
                    want += self._how_many_fit(task.resources, len(queue))
                    break
                queue.popleft()
                self._dispatch(task, worker)
        for _ in range(min(want, self.max_starting) - self.starting):
            self._start_worker()

    def _can_run(self, need: dict[str, float]) -> bool:
        if not _fits(need, self.available):
            return False
        gpus = need.get("GPU", 0.0)
        return gpus <= 0 or self._pick_gpus(gpus) is not None

    def _pick_gpus(self, amount: float) -> list[int] | None:
        """GPU indices for ``amount``: a fraction packs onto the first GPU with room; a
        whole number takes that many entirely free GPUs."""
        free = self.gpu_free
        if amount < 1.0:
            for i, f in enumerate(free):
                if f + 1e-9 >= amount:
                    return [i]
            return None
        whole = [i for i, f in enumerate(free) if f > 1.0 - 1e-9]
        n = int(round(amount))
        return whole[:n] if len(whole) >= n else None

    def _pipeline_worker(self, task: Task) -> Worker | None:
        """A busy worker running one plain task of the same shape, to send ``task`` ahead to."""
        need = task.resources
        if need.get("GPU") or task.spec.actor_id:
            return None
        fid = task.spec.function_id
        best: Worker | None = None
        for w in self.workers.values():
            if (w.state == "BUSY" and len(w.frames) == 1 and not w.frames[0].blocked
                    and len(w.queued) < PIPELINE_DEPTH and w.frames[0].resources == need
                    and (best is None or len(w.queued) < len(best.queued))):
                running = self.tasks.get(w.frames[0].task_id)
                # Only more of the same function: a uniform batch of short tasks is what
                # pipelining is for; anything else could wait behind a long task.
                if running is not None and running.spec.function_id == fid:
                    best = w
        return best

    def _how_many_fit(self, need: dict[str, float], limit: int) -> int:
        n = limit
        for k, v in need.items():
            if v > 0:
                n = min(n, int(self.available.get(k, 0.0) / v + 1e-9))
        return n

    def _worker_for(self, task: Task) -> Worker | None:
        for wid in (self.waited_by.get(task.spec.task_id),
                    self.running_on.get(task.spec.parent_task_id)):
            if wid is None:
                continue
            w = self.workers.get(wid)
            if (w is not None and self._all_blocked(w) and len(w.frames) < MAX_INLINE_DEPTH
                    and (wid == self.waited_by.get(task.spec.task_id)
                         or w.frames[-1].task_id == task.spec.parent_task_id)):
                return w
        while self.idle:
            w = self.idle.pop()
            if w.state == "IDLE":
                return w
        return None

    def _start_worker(self) -> None:
        # The service calls worker_starting() with the new worker's id.
        self.outbox.append((START_WORKER,))
        self.starting += 1

    def _dispatch(self, task: Task, worker: Worker, ahead: bool = False) -> None:
        spec = task.spec
        if ahead:  # resources come from the task before it on that worker
            frame = Frame(spec.task_id, {})
            worker.queued.append(frame)
        else:
            for k, v in task.resources.items():
                self.available[k] = self.available.get(k, 0.0) - v
            worker.state = "BUSY"
            frame = Frame(spec.task_id, task.resources)
            gpus = task.resources.get("GPU", 0.0)
            if gpus > 0:
                ids = self._pick_gpus(gpus) or []
                share = gpus if gpus < 1.0 else 1.0
                for i in ids:
                    self.gpu_free[i] -= share
                frame.gpu_ids = ids
            worker.frames.append(frame)
        task.state = "RUNNING"
        task.worker_id = worker.worker_id
        self.running_on[spec.task_id] = worker.worker_id
        op = node_pb2.NodeOp()
        ex = op.execute
        ex.spec.CopyFrom(spec)
        ex.gpu_ids.extend(frame.gpu_ids)
        for oid in spec.arg_refs:
            if self._fill(ex.args.add(), oid, pin=True):
                task.pinned.append(oid)
        self.stats["dispatched"] += 1
        if spec.task_id not in self.forwarded:
            self.stats["local"] += 1
        self.outbox.append((SEND, worker.client_id, op))
        self._event(task, "RUNNING", worker_pid=worker.pid)

    def _fill(self, data: common_pb2.ObjectData, oid: bytes, pin: bool = False) -> bool:
        """Describe object ``oid`` in ``data``; True when it was pinned in the store."""
        obj = self.objects[oid]
        data.object_id = oid
        data.size = obj.size
        data.node_id = self.node_id
        if obj.inline is not None:
            data.inline = obj.inline
            return False
        data.shm_path = self.store.locate(oid)
        if pin:
            self.store.pin(oid)
        return pin

    def _release(self, frame: Frame) -> None:
        for k, v in frame.resources.items():
            self.available[k] = self.available.get(k, 0.0) + v
        if frame.gpu_ids:
            gpus = frame.resources.get("GPU", 0.0)
            share = gpus if gpus < 1.0 else 1.0
            for i in frame.gpu_ids:
                self.gpu_free[i] = min(1.0, self.gpu_free[i] + share)
            frame.gpu_ids = []
        if frame.lent:  # the CPUs were already given back while it was blocked
            self.available["CPU"] = self.available.get("CPU", 0.0) - frame.lent
            frame.lent = 0.0

    def result(self, client_id: bytes, res: node_pb2.TaskResult) -> None:
        client = self.clients.get(client_id)
        w = self.workers.get(client.worker_id) if client is not None else None
        task = self.tasks.get(res.task_id)
        if task is not None and task.spec.actor_creation:
            self._finish(task, [], "FAILED" if res.failed else "FINISHED", res.error_summary[:200],
                         w.pid if w is not None else 0)
            self._actor_creation_done(task, w, res)
            self._schedule()
            return
        if task is not None and task.spec.actor_id:
            self._actor_call_done(task)
            self._finish(task, res.returns, "FAILED" if res.failed else "FINISHED",
                         res.error_summary[:200], w.pid if w is not None else 0)
            return
        frame = self._pop_frame(w, res.task_id) if w is not None else None
        if frame is not None and w is not None:
            if not w.frames and w.queued and not frame.lent:
                # The next task sent ahead starts now, on the resources this one held.
                nxt = w.queued.popleft()
                nxt.resources, nxt.gpu_ids = frame.resources, frame.gpu_ids
                w.frames.append(nxt)
            else:
                self._release(frame)
                if not w.frames and not w.queued:
                    w.state = "IDLE"
                    w.idle_since = self.clock()
                    self.idle.append(w)
                elif w.frames:
                    self._run_inline(w)
        if task is None:
            self._schedule()
            return
        spec = task.spec
        if (res.failed and res.retryable and not task.cancelled
                and (spec.max_retries < 0 or spec.attempt < spec.max_retries)):
            spec.attempt += 1
            self._unpin(task)
            self._event(task, "RETRYING", detail=res.error_summary)
            self._make_ready(task)
            self._schedule()
            return
        self._finish(task, res.returns, "FAILED" if res.failed else "FINISHED", res.error_summary,
                     w.pid if w is not None else 0)
        self._schedule()

    def _finish(self, task: Task, returns: Iterable[common_pb2.ObjectData], state: str,
                detail: str = "", worker_pid: int = 0) -> None:
        spec = task.spec
        del self.tasks[spec.task_id]
        self.infeasible.pop(spec.task_id, None)
        self.waited_by.pop(spec.task_id, None)
        self.running_on.pop(spec.task_id, None)
        if spec.parent_task_id:
            kids = self.children.get(spec.parent_task_id)
            if kids is not None:
                kids.discard(spec.task_id)
                if not kids:
                    del self.children[spec.parent_task_id]
        home = self.forwarded.pop(spec.task_id, None)
        if home is not None:
            self._report_home(task, home, list(returns), state, detail)
            returns = ()
        owner = self.clients.get(spec.owner_id)
        for data in returns:
            oid = data.object_id
            if self.refs.get(oid, 0) <= 0:
                # Nobody holds this result any more: drop it at once.
                if data.shm_path:
                    self.store.free(oid)
                continue
            self._store(data)
            if owner is not None:
                op = node_pb2.NodeOp()
                self._fill(op.object, oid)
                self.outbox.append((SEND, owner.client_id, op))
        self._unpin(task)
        for oid in spec.arg_refs:
            self._decref(oid)
        for oid in spec.nested_refs:
            self._decref(oid)
        self.stats["finished" if state == "FINISHED" else "failed"] += 1
        self._event(task, state, detail=detail, worker_pid=worker_pid)

    def _unpin(self, task: Task) -> None:
        for oid in task.pinned:
            self.store.unpin(oid)
        task.pinned.clear()

    def _fail(self, task: Task, error: BaseException, state: str = "FAILED") -> None:
        blob = self.encode_error(error)
        returns = []
        for i in range(1, max(task.spec.num_returns, 0) + 1):
            d = common_pb2.ObjectData(object_id=_ids.object_id(task.spec.task_id, i),
                                      inline=blob, size=len(blob))
            returns.append(d)
        if task.state == "READY":
            task.state = "DONE"  # lazily dropped from its ready queue
        for oid in task.missing:
            waiters = self.dep_waiters.get(oid)
            if waiters is not None and task in waiters:
                waiters.remove(task)
        self._finish(task, returns, state, str(error).split("\n", 1)[0])

    # ---- cancellation --------------------------------------------------------------

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        task = self.tasks.get(task_id)
        if recursive:
            for child in list(self.children.get(task_id, ())):
                self.cancel(child, force, recursive)
        if task is None:
            return
        if task.cancelled and not (force and task.state == "RUNNING" and not task.force_cancelled):
            return  # a repeated cancel; only an escalation to force=True goes on
        task.cancelled = True
        if task.state == "RUNNING":
            w = self.workers.get(task.worker_id)
            if w is None:
                return
            ahead = next((f for f in w.queued if f.task_id == task_id), None)
            if ahead is not None:
                # Sent ahead, not started: the worker will skip it; it resolves now.
                w.queued.remove(ahead)
                op = node_pb2.NodeOp()
                op.cancel.task_id = task_id
                self.outbox.append((SEND, w.client_id, op))
                self._fail(task, self._cancelled_error(task), "CANCELLED")
                return
            if force:
                task.force_cancelled = True
                self.outbox.append((KILL_WORKER, w.worker_id))
            else:
                op = node_pb2.NodeOp()
                op.cancel.task_id = task_id
                self.outbox.append((SEND, w.client_id, op))
            return
        self._fail(task, self._cancelled_error(task), "CANCELLED")
        self._schedule()

    def _cancelled_error(self, task: Task) -> BaseException:
        from runtime.exceptions import TaskCancelledError
        return TaskCancelledError(
            f"Task {task.spec.name}() (task {_ids.short(task.spec.task_id)}) was cancelled.",
            task_id=task.spec.task_id.hex())

    # ---- logs and events -----------------------------------------------------------

    def log(self, lines: node_pb2.LogLines) -> None:
        if lines.owner_id in self.clients:
            op = node_pb2.NodeOp()
            op.log.CopyFrom(lines)
            self.outbox.append((SEND, lines.owner_id, op))
            return
        task = self.tasks.get(lines.task_id)
        if task is not None and task.spec.driver_address:
            self.outbox.append((FORWARD_LOG, task.spec.driver_address, lines))

    def _event(self, task: Task, state: str, detail: str = "",
               worker_pid: int = 0) -> common_pb2.TaskEvent:
        spec = task.spec
        ev = common_pb2.TaskEvent(task_id=spec.task_id, name=spec.name, job_id=spec.job_id,
                                  state=state, node_id=self.node_id, worker_pid=worker_pid,
                                  time=self.clock(), detail=detail, attempt=spec.attempt,
                                  actor_id=spec.actor_id)
        self.outbox.append((EVENT, ev))
        return ev

    def _send_event(self, client_id: bytes, task: Task, state: str, detail: str) -> None:
        if client_id in self.clients:
            op = node_pb2.NodeOp()
            ev = op.event
            ev.task_id, ev.name, ev.state, ev.detail = task.spec.task_id, task.spec.name, state, detail
            ev.node_id = self.node_id
            self.outbox.append((SEND, client_id, op))

    # ---- load ----------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """An immutable debug snapshot: resources, queues, workers and their frames."""
        return {
            "available": dict(self.available), "total": dict(self.total),
            "queued": self.queue_length(), "tasks": len(self.tasks),
            "states": dict(Counter(t.state for t in self.tasks.values())),
            "starting": self.starting, "idle": len(self.idle),
            "workers": {w.worker_id.hex()[:6]: (w.state, [(f.task_id.hex()[:6], f.blocked, f.lent)
                                                          for f in w.frames])
                        for w in self.workers.values()},
            "waited_by": len(self.waited_by), "objects": len(self.objects),
            "stats": dict(self.stats),
        }

    def reap_idle(self, idle_s: float) -> list[bytes]:
        """Workers to stop: idle for ``idle_s`` seconds, beyond one per CPU (those stay warm)."""
        keep = max(1, int(self.total.get("CPU", 1)))
        if len(self.idle) <= keep:
            return []
        now = self.clock()
        # Oldest idle first; the most recently used (end of the list) stay.
        victims = [w for w in self.idle[:len(self.idle) - keep] if now - w.idle_since >= idle_s]
        for w in victims:
            self.idle.remove(w)
            w.state = "DEAD"
            del self.workers[w.worker_id]
        return [w.worker_id for w in victims]

    def queue_length(self) -> int:
        """Tasks waiting to start here: ready ones and those sent ahead to busy workers."""
        ahead = sum(len(w.queued) for w in self.workers.values())
        return ahead + sum(len(q) for q in self.ready.values())

    def load(self) -> common_pb2.NodeLoad:
        load = common_pb2.NodeLoad(queue_length=self.queue_length(),
                                   num_workers=len(self.workers),
                                   tasks_local=self.stats["local"],
                                   tasks_spilled=self.stats["spilled"],
                                   tasks_received=self.stats["received"])
        load.total.update(self.total)
        load.available.update({k: max(v, 0.0) for k, v in self.available.items()})
        return load
