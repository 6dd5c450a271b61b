"""The local scheduler: pure state of one node (tasks, workers, objects, references).

Events come in as method calls (a client submitted, a worker finished, a ref was
dropped); decisions go out as typed actions (``actions.py``), which the I/O side drains
with ``take_actions()`` right after each event and carries out in order. Nothing here
touches sockets or processes. Shared-memory objects are handled through a small ``Store``
protocol, so the state can be driven in tests with a fake store.

``LocalScheduler`` owns the tasks (the table, parent → children) and their life (submit,
result, retries, cancel, failure), and wires the parts, each of which owns its data::

    Resources     resources.py  totals, available amounts, per-GPU free fractions
    ReadyQueues   ready.py      ready tasks per shape; which task starts on which worker
    WorkerTable   workers.py    workers, idle list, starting count, frames, sent-ahead tasks
    Lending       lending.py    blocked workers lend CPUs and run what they wait for nested
    ObjectTable   objects.py    objects, ref counts, waiters, remote objects, pulls, holds
    ClientTable   clients.py    drivers and workers connected, the refs each one holds
    ActorTable    actors.py     actors created or living here, their call queues, restarts
    RemoteActors  remote_actors.py  calls to actors on other nodes, forwarded in order
    Spilling      spill.py      spill decisions, forwarded and infeasible tasks, peers

A task runs when its resources fit the node's available amounts; a worker that blocks in
``get`` lends its CPUs back, and tasks it waits on are preferably run *inside* that worker
(nested, on its stack), so deep recursions of tasks need few processes. Every object has a
count of holders (clients, tasks taking it as an argument, objects containing it); it is
freed when the count reaches zero.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from runtime import _ids
from runtime.config import Settings
from runtime.node.actions import Action, ForwardLog, KillWorker, ReportEvent, StartWorker, StopWorker
from runtime.node.actors import ActorTable
from runtime.node.bundles import BundleTable, waits_for_group
from runtime.node.cancelling import Cancelling
from runtime.node.clients import ClientTable
from runtime.node.lending import Lending
from runtime.node.lineage import Lineage
from runtime.node.memory_monitor import MemoryMonitor
from runtime.node.objects import ErrorEncoder, ObjectTable, PullSource, Store
from runtime.node.ready import ReadyQueues
from runtime.node.remote_actors import RemoteActors
from runtime.node.resources import Resources
from runtime.node.spill import Spilling
from runtime.node.streams import Streams
from runtime.node.tasks import Phase, Task, cancelled_error, crashed_error, error_returns, requeue
from runtime.node.workers import WorkerTable
from runtime.protocol import common_pb2, node_pb2
from runtime.protocol.resources import describe
from runtime.protocol.states import ClientKind, TaskState

__all__ = ["ErrorEncoder", "LocalScheduler", "PullSource", "Store"]

# Bound once: reading an enum member costs ~80 ns on Python 3.11; these are read per task.
_SUBMITTED, _FINISHED, _FAILED = TaskState.SUBMITTED, TaskState.FINISHED, TaskState.FAILED
_object_id = _ids.object_id


class LocalScheduler:
    """One node's tasks, workers, objects and references. See the module docstring."""

    def __init__(self, node_id: bytes, resources: dict[str, float], store: Store,
                 encode_error: ErrorEncoder, *, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.encode_error = encode_error
        self.clock = clock
        self._idle_worker_s = settings.idle_worker_s
        #: Workers kept started even when idle (the node's prestarted pool), refilled when some die.
        self.warm_workers = 0
        #: Decisions for the I/O side, drained after each event (``take_actions``).
        self._actions: list[Action] = []
        emit = self._emit = self._actions.append
        #: Tasks submitted here, and those over (finished or failed); each part counts its own.
        self._submitted = self._finished = self._failed = 0
        self.tasks: dict[bytes, Task] = {}
        #: The task of an id while it is not over (``TaskHost.task``).
        self.task = self.tasks.get
        #: parent task id -> its tasks submitted here and not over.
        self.children: dict[bytes, set[bytes]] = {}
        self.resources = Resources(resources)
        cpus = self.resources.cpus
        self.workers = WorkerTable(max_starting=settings.max_starting_workers or max(2, cpus),
                                   pipeline_depth=settings.pipeline_depth, clock=clock)
        self.lending = Lending(settings.max_inline_depth, self.workers, self.resources)
        self.objects = ObjectTable(node_id, store, encode_error, emit)
        self.clients = ClientTable(node_id, self.objects, encode_error, emit)
        self.remote_actors = RemoteActors(node_id, self, self.objects, emit)
        self.actors = ActorTable(node_id, self, self.objects, self.workers, self.remote_actors, emit, clock)
        self.spill = Spilling(node_id, self, self.objects, self.resources, self.actors, emit,
                              spill_threshold=settings.spill_threshold or max(4, 2 * cpus),
                              max_spills=settings.max_spills, max_actor_spills=settings.max_actor_spills)
        self.ready = ReadyQueues(self, self.resources, self.workers, self.lending, self.objects,
                                 self.spill.is_forwarded, emit)
        # Events the parts handle whole (their docstrings say what each one does).
        self.update_refs = self.clients.update_refs
        self.has_client = self.clients.__contains__
        self.ready_elsewhere = self.clients.send_remote
        self.worker_starting = self.workers.started
        self.kill_actor = self.actors.kill
        self.spilled = self.spill.spilled
        self.spill_failed = self.spill.spill_failed
        self.unschedulable = self.spill.unschedulable
        self.accept_forwarded = self.spill.accept_forwarded
        self.accept_calls = self.spill.accept_calls
        self.remote_result = self.spill.remote_result
        self.peer_alive = self.spill.peer_alive
        self.peer_died = self.spill.peer_died
        self.actor_row = self.actors.row_seen
        self.calls_delivered = self.remote_actors.delivered
        self.calls_undelivered = self.remote_actors.undelivered
        self.kill_hosted_actor = self.actors.kill_hosted
        self.set_schedulers = self.spill.set_schedulers
        self.release_remote_holds = self.objects.release_remote_holds
        self.pull_source = self.objects.pull_source
        self.schedule = self.ready.schedule
        self.can_run = self.resources.can_run
        self.bundles = BundleTable(self.resources, self.workers, self.actors, self)  # placement groups
        self.lineage = Lineage(node_id, self, self.objects, encode_error)
        self.cancelling = Cancelling(node_id, self, self.tasks, self.children, self.workers, self.clients,
                                     self.objects, self.spill, self.actors, encode_error, emit)
        self.cancel = self.cancelling.cancel
        self.objects.on_free += [self.lineage.freed, self.actors.anchor_freed]
        self.objects.rebuild = self.lineage.rebuild
        self.object_lost, self.inputs_lost = self.lineage.lost, self.lineage.inputs_lost
        self.streams = Streams(self, self.clients, self.objects, self.spill)
        self.stream_item_home = self.streams.item_home
        self.memory = MemoryMonitor(node_id, self, self.workers, emit, settings)  # kills past a threshold

    def take_actions(self) -> list[Action]:
        """The actions made since the last call, in order; the outbox is empty after."""
        actions = self._actions
        if not actions:
            return []
        out = actions.copy()
        actions.clear()
        return out

    # ---- clients -------------------------------------------------------------------

    def connect(self, client_id: bytes, kind: str, pid: int, worker_id: bytes = b"") -> None:
        """A client's session opened; ``kind`` is a :class:`ClientKind` (its wire string)."""
        client_kind = ClientKind(kind)
        self.clients.connect(client_id, client_kind, pid, worker_id)
        if client_kind == ClientKind.WORKER:
            self.workers.connected(worker_id, pid, client_id)
            self.ready.schedule()

    def disconnect(self, client_id: bytes) -> None:
        """A client's session ended: the references it held are dropped; a worker's process
        is killed (its exit reports its tasks). What it owned, a driver or a worker (busy or
        idle), goes with it: its actors (unless detached), objects and tasks (``cancelling.py``)."""
        client = self.clients.disconnect(client_id)
        if client is None:
            return
        if client.kind == ClientKind.WORKER:
            self.workers.disconnected(client_id)
            self._emit(KillWorker(client.worker_id))
        self.cancelling.owner_died(client)

    # ---- workers -------------------------------------------------------------------

    def worker_exited(self, worker_id: bytes, exit_code: int | None) -> None:
        w = self.workers.exited(worker_id)
        if w is None:
            return
        was_actor = w.was_actor
        if was_actor:
            self.actors.worker_died(w, exit_code)
        for frame in w.queued:  # sent ahead, never started: simply queue them again
            task = self.tasks.get(frame.task_id)
            if task is not None and not task.cancelled:
                requeue(self, task)
            elif task is not None:
                self.fail(task, cancelled_error(task.spec), TaskState.CANCELLED)
        for frame in reversed(w.frames):
            self.ready.release(frame)
            if was_actor:
                # The frame of the creation that made this worker an actor: it only held the
                # actor's resources. Its task id is the restarted creation's now (queued by
                # worker_died above), which must not be failed as if it ran here.
                continue
            task = self.tasks.get(frame.task_id)
            if task is None:
                continue
            spec = task.spec
            if spec.actor_creation:  # the constructor's process died: the actor's restarts decide
                self.finish(task, [], _FAILED, f"worker pid {w.pid} died")
                self.actors.creation_worker_died(spec.actor_id, w, exit_code)
            elif task.cancelled:
                self.fail(task, cancelled_error(task.spec), TaskState.CANCELLED)
            elif self.memory.killed(w.worker_id):  # its OOM retries decide, apart from max_retries
                self.memory.retry_or_fail(task)
            elif spec.max_retries < 0 or spec.attempt < spec.max_retries:
                spec.attempt += 1
                requeue(self, task, f"worker pid {w.pid} died (exit code {exit_code})", w.pid)
            else:
                self.fail(task, crashed_error(spec, w.pid, exit_code, self.node_id))
        self.ready.schedule()
        for _ in range(self.workers.to_start(self.workers.shortfall(self.warm_workers))):
            self._emit(StartWorker())  # the warm pool comes back to its size
            self.workers.asked()

    def reap_idle(self) -> None:
        """The heartbeat's turn: stop workers idle for ``idle_worker_s`` s beyond one per CPU
        (a StopWorker each), but not those that own something in use; write the rows of
        actors whose calls returned since the last."""
        self.actors.write_changed_rows()
        keep, idle_s = max(1, self.resources.cpus), self._idle_worker_s
        for worker_id in self.workers.reap(keep, idle_s, self.cancelling.owning):
            self._emit(StopWorker(worker_id))

    # ---- tasks ---------------------------------------------------------------------

    def add_task(self, spec: common_pb2.TaskSpec) -> Task:
        task = Task(spec, dict(spec.resources), set())
        self.tasks[spec.task_id] = task
        return task

    def submit(self, client_id: bytes, spec: common_pb2.TaskSpec) -> None:
        task_id = spec.task_id
        objects = self.objects
        # The submitter holds the task's returns; the task holds its inputs.
        self.clients.hold(client_id, [_object_id(task_id, i) for i in range(1, spec.num_returns + 1)])
        objects.hold_inputs(spec)
        task = self.add_task(spec)
        if spec.parent_task_id:
            self.children.setdefault(spec.parent_task_id, set()).add(task_id)
        self._submitted += 1
        self.event(task, _SUBMITTED)
        if spec.actor_id and not spec.actor_creation:
            self.actors.call(task)
            return
        if spec.actor_creation:
            self.actors.created(task)
        resources = task.resources
        if self.spill.fits_nowhere(resources):
            here = describe(self.resources.snapshot()["total"])
            msg = (f"Task {spec.name}() needs {describe(resources)} but no node has that much (this "
                   f"node has {here}). It will wait until a node that fits it joins the cluster.")
            self.event(task, TaskState.INFEASIBLE, detail=waits_for_group(spec) or msg)
            if not spec.strategy.placement_group_id:  # a group's task: the group's row says why
                self.clients.send_event(spec.owner_id, task_id, spec.name, TaskState.INFEASIBLE, msg)
            if self.spill.park_unplaceable(task):
                return
        # Inputs on other nodes are pulled only once the task is to run here (``make_ready``).
        objects.await_inputs(task, want=True, remote_ok=True)
        if task.missing:
            return
        self.make_ready(task)
        self.ready.schedule()

    def make_ready(self, task: Task) -> None:
        """Queue a task whose inputs are all here or on other nodes, or spill it; one that
        stays waits for its remote inputs to be pulled here first."""
        reason = self.spill.reason(task)
        if reason is not None:
            self.spill.spill(task, reason)
            return
        if task.spec.arg_refs:
            self.objects.await_inputs(task, want=True)
            if task.missing:
                task.phase = Phase.WAITING
                return
        self.ready.push(task)

    def result(self, client_id: bytes, res: node_pb2.TaskResult) -> None:
        if res.stream_index:  # an item of a streaming task, which goes on
            self.streams.item(res)
            return
        workers = self.workers
        w = workers.of_client(client_id)
        task = self.tasks.get(res.task_id)
        pid = w.pid if w is not None else 0
        if task is not None and task.spec.actor_creation:
            self.finish(task, [], _FAILED if res.failed else _FINISHED,
                        res.error_summary[:200], pid)
            self.actors.creation_done(task, w, res)
            self.ready.schedule()
            return
        if task is not None and task.spec.actor_id:
            if res.actor_exit:
                self.actors.kill(task.spec.actor_id, True, f"{task.spec.name}() called exit_actor()")
            self.actors.call_done(task)
            failed = TaskState.CANCELLED if task.cancelled else _FAILED  # stopped by its cancel
            self.finish(task, res.returns, failed if res.failed else _FINISHED, res.error_summary[:200], pid)
            return
        frame = workers.pop_frame(w, res.task_id) if w is not None else None
        # The next task sent ahead starts now, on the resources this one held; else they
        # are free again, and the worker idle or able to run a nested task.
        if frame is not None and w is not None and not self.ready.promote(w, frame):
            self.ready.release(frame)
            if workers.settle(w):
                self.ready.run_inline(w, self.children)
            for retired in workers.take_retired():  # it ran its function's max_calls
                self._emit(StopWorker(retired))
        if task is None:
            self.ready.schedule()
            return
        spec = task.spec
        if (res.failed and res.retryable and not task.cancelled
                and (spec.max_retries < 0 or spec.attempt < spec.max_retries)):
            spec.attempt += 1
            self.unpin(task)
            self.event(task, TaskState.RETRYING, detail=res.error_summary)
            self.make_ready(task)
            self.ready.schedule()
            return
        # A cancelled task that stopped with an error stopped because of the cancel.
        ended = (TaskState.CANCELLED if task.cancelled else _FAILED) if res.failed else _FINISHED
        self.finish(task, res.returns, ended, res.error_summary, pid)
        self.ready.schedule()

    def finish(self, task: Task, returns: Iterable[common_pb2.ObjectData], state: TaskState,
               detail: str = "", worker_pid: int = 0) -> None:
        """End ``task``: its results go to their owner (or home), its inputs are released."""
        spec = task.spec
        task_id = spec.task_id
        del self.tasks[task_id]
        # It may end while queued or waiting here (a copy that ran on another node reported
        # first): it must not start after its end, with its inputs released.
        if task.phase == Phase.READY:
            task.phase = Phase.DONE  # lazily dropped from its ready queue
        if task.missing:
            self.objects.forget_waiter(task)
        self.lending.forget(task_id)
        self.workers.task_over(task_id)
        if spec.parent_task_id:
            kids = self.children.get(spec.parent_task_id)
            if kids is not None:
                kids.discard(task_id)
                if not kids:
                    del self.children[spec.parent_task_id]
        if spec.actor_id and not spec.actor_creation:
            self.remote_actors.call_done(task_id, spec.actor_id)
        home = self.spill.task_over(task_id, bool(spec.actor_id) and not spec.actor_creation)
        if home is not None:
            self.spill.report_home(task, home, list(returns), state, detail)
            returns = ()
        objects = self.objects
        owner = spec.owner_id if spec.owner_id in self.clients else None
        for data in returns:
            if objects.drop_unheld(data):
                continue  # nobody holds this result any more: dropped at once
            self.store_object(data)
            if owner is not None:
                self.clients.send_object(owner, data.object_id)
        self.unpin(task)
        if state == _FINISHED:
            self._finished += 1
            if home is None and not spec.actor_id:
                self.lineage.keep(spec)  # before its inputs go: it keeps their lineage
        else:
            self._failed += 1
        objects.release_inputs(spec)
        self.event(task, state, detail=detail, worker_pid=worker_pid)

    def unpin(self, task: Task) -> None:
        """Unpin the shared-memory arguments ``task`` was reading."""
        if task.pinned:
            self.objects.unpin(task.pinned)
            task.pinned.clear()

    def fail(self, task: Task, error: BaseException, state: TaskState = TaskState.FAILED) -> None:
        """End ``task`` with ``error`` as the value of each of its returns (a streaming
        task's next item)."""
        blob = self.encode_error(error)
        if task.spec.streaming:
            self.streams.end_with(task, blob)
        returns = error_returns(task.spec, blob)
        self.finish(task, returns, state, str(error).split("\n", 1)[0])

    # ---- blocking and nested runs --------------------------------------------------

    def blocked(self, client_id: bytes, state: node_pb2.BlockedState) -> None:
        w = self.workers.of_client(client_id)
        if w is not None:
            self.ready.blocked(w, state, self.children)

    # ---- objects -------------------------------------------------------------------

    def store_object(self, data: common_pb2.ObjectData) -> None:
        """Keep object ``data`` here and wake the tasks and clients waiting for it."""
        oid = data.object_id
        objects = self.objects
        if not objects.add(data):
            return
        ready, getters = objects.wake(oid)
        if ready is not None:
            for task in ready:
                if task.phase == Phase.WAITING:
                    self.make_ready(task)
                elif task.phase == Phase.QUEUED:
                    self.actors.inputs_ready(task)
            self.ready.schedule()
        if getters:
            for cid in getters:
                if cid in self.clients:
                    self.clients.send_object(cid, oid)

    def put(self, client_id: bytes, data: common_pb2.ObjectData) -> None:
        self.clients.hold(client_id, (data.object_id,))
        self.store_object(data)

    def get(self, client_id: bytes, object_ids: Iterable[bytes]) -> None:
        objects = self.objects
        for oid in object_ids:
            if oid in objects:
                self.clients.send_object(client_id, oid)
            elif objects.held(oid) or _ids.task_of(oid) in self.tasks:
                objects.wait_get(oid, client_id)
                objects.want(oid)
            else:
                self.clients.send_lost(client_id, oid)

    def pulled(self, data: common_pb2.ObjectData) -> None:
        """A pull finished: the object is in the local store now."""
        oid = data.object_id
        wanted, source = self.objects.pull_done(oid)
        if wanted:
            self.store_object(data)
            self.objects.set_remote_copy(oid, source)

    def pull_failed(self, oid: bytes, why: str) -> None:
        """A pull of ``oid`` failed: it is rebuilt, or becomes an ObjectLostError."""
        if oid in self.objects.pulling:  # else known lost already (its node died)
            self.lineage.lost(oid, f"pulling it failed: {why}")

    # ---- logs and events -----------------------------------------------------------

    def log(self, lines: node_pb2.LogLines) -> None:
        """Printed lines: to their owner when it is here, else to the root driver's node."""
        if self.clients.send_log(lines):
            return
        task = self.tasks.get(lines.task_id)
        if task is not None and task.spec.driver_address:
            self._emit(ForwardLog(task.spec.driver_address, lines))

    def event(self, task: Task, state: TaskState, detail: str = "",
              worker_pid: int = 0) -> common_pb2.TaskEvent:
        """Report ``task`` in ``state`` to the GCS; the event may still be amended."""
        spec = task.spec
        ev = common_pb2.TaskEvent(task_id=spec.task_id, name=spec.name, job_id=spec.job_id,
                                  state=state, node_id=self.node_id, worker_pid=worker_pid,
                                  time=self.clock(), detail=detail, attempt=spec.attempt,
                                  actor_id=spec.actor_id)
        self._emit(ReportEvent(ev))
        return ev

    # ---- load ----------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """An immutable debug snapshot: resources, queues, workers and their frames."""
        workers = self.workers
        return {
            **self.resources.snapshot(),
            "queued": self.queue_length(), "tasks": len(self.tasks),
            "states": dict(Counter(str(t.phase) for t in self.tasks.values())),
            **workers.summary(),
            "waited_by": self.lending.waiting(), "objects": len(self.objects),
            "stats": {k: n for k, n in self.counters().items() if n},
        }

    def counters(self) -> dict[str, int]:
        """The node's task counters, each kept by the part that counts it."""
        return {"submitted": self._submitted, "finished": self._finished, "failed": self._failed,
                **self.ready.counters(), **self.spill.counters()}

    def queue_length(self) -> int:
        """Tasks waiting to start here: ready ones and those sent ahead to busy workers."""
        return self.workers.sent_ahead() + len(self.ready)

    def load(self) -> common_pb2.NodeLoad:
        counts = self.counters()
        load = common_pb2.NodeLoad(queue_length=self.queue_length(),
                                   num_workers=len(self.workers),
                                   tasks_local=counts["local"],
                                   tasks_spilled=counts["spilled"],
                                   tasks_received=counts["received"])
        resources = self.resources.snapshot()
        load.total.update(resources["total"])
        load.available.update({k: max(v, 0.0) for k, v in resources["available"].items()})
        return load
