"""Actors on a node: creation, ordered calls, restarts, death. Pure, a part of the local
scheduler.

An actor is created by a creation task that runs like any task (resources, inputs); the
worker that ran it becomes the actor's dedicated process and keeps the actor's resources
until the actor dies. Calls go into the actor's FIFO in the order the node receives them
(so each caller's calls keep their submission order); the head call is sent to the actor
as soon as its inputs are ready, and the actor's process runs calls in order (or
concurrently, when it was created with ``max_concurrency > 1`` or has async methods).

When the actor's process dies it restarts (the creation task runs again) up to
``max_restarts`` times; calls queued meanwhile wait for the new instance; calls that were
in flight are re-sent up to ``max_task_retries`` times or fail with ``ActorDiedError``.
Every transition of an actor is written to the GCS as a ``PutActor`` action.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime import _ids
from runtime.exceptions import ActorDiedError
from runtime.node.actions import Action, KillWorker, ReleaseActorName, Send
from runtime.node.actor_rows import ActorRows
from runtime.node.objects import ObjectTable
from runtime.node.remote_actors import RemoteActors
from runtime.node.tasks import Phase, Task, TaskHost
from runtime.node.workers import Departed, Worker, WorkerTable
from runtime.protocol import common_pb2, gcs_pb2, node_pb2
from runtime.protocol.states import DEFAULT_NAMESPACE, ActorState, Lifetime, TaskState

#: Why an actor whose last handle went away ended (its death cause).
OUT_OF_SCOPE = ("all references to it went out of scope (an actor that is neither named nor "
                "detached ends with its last handle; name it, or use lifetime='detached', to keep it)")


@dataclass(slots=True)
class Actor:
    actor_id: bytes
    creation: common_pb2.TaskSpec
    options: dict[str, Any]
    state: ActorState = ActorState.PENDING
    worker_id: bytes = b""
    pid: int = 0
    queue: deque[Task] = field(default_factory=deque)
    in_flight: dict[bytes, Task] = field(default_factory=dict)
    restarts: int = 0
    death_cause: str = ""
    #: Its constructor's encoded error, when that is why it died.
    death_error: bytes = b""
    no_restart: bool = False
    created: float = 0.0
    #: Its creator's record of an actor whose creation a scheduler placed on another node:
    #: that node (the actor lives there; calls go through ``RemoteActors``).
    host_node: bytes = b""
    #: The node whose creator this node hosts the actor for (b"": created here).
    hosted_for: bytes = b""
    #: Its last handle is gone: it ends once the calls it has are done.
    ending: bool = False

    @property
    def max_restarts(self) -> int:
        return int(self.options.get("max_restarts") or 0)

    @property
    def max_task_retries(self) -> int:
        return int(self.options.get("max_task_retries") or 0)

    @property
    def label(self) -> str:
        name = self.options.get("name")
        cls = self.options.get("class_name", "actor")
        return f"{cls} (id {_ids.short(self.actor_id)}{', name ' + repr(name) if name else ''})"


class ActorTable:
    """The actors created on this node (see the module docstring)."""

    __slots__ = ("_clock", "_emit", "_host", "_node_id", "_objects", "_remote", "_row", "_rows",
                 "_workers", "actors")

    def __init__(self, node_id: bytes, host: TaskHost, objects: ObjectTable, workers: WorkerTable,
                 remote: RemoteActors, emit: Callable[[Action], None], clock: Callable[[], float]) -> None:
        self._node_id = node_id
        self._host = host
        self._objects = objects
        self._workers = workers
        self._remote = remote
        remote.hand_back = self._take_back
        self._emit = emit
        self._clock = clock
        self.actors: dict[bytes, Actor] = {}
        #: The actors' GCS rows (``actor_rows.py``); ``_row`` writes one at a transition.
        self._rows = ActorRows(node_id, emit)
        self._row = self._rows.write

    def __len__(self) -> int:
        return len(self.actors)

    # ---- creation ------------------------------------------------------------------

    def created(self, task: Task, hosted_for: bytes = b"") -> None:
        """The creation task of a new actor was submitted here, or placed here by a scheduler
        for its creator's node ``hosted_for``."""
        spec = task.spec
        try:
            options = json.loads(spec.actor_options or b"{}")
        except ValueError:
            options = {}
        # A restart placed here (by its creator, after the node it lived on died) counts on.
        actor = Actor(spec.actor_id, spec, options, created=self._clock(), hosted_for=hosted_for,
                      restarts=spec.attempt)
        self.actors[spec.actor_id] = actor
        # The constructor's arguments outlive its first run: a restart runs it again.
        self._objects.hold_inputs(spec)
        self._row(actor)

    def creation_done(self, task: Task, w: Worker | None, res: node_pb2.TaskResult) -> None:
        """The constructor returned (or raised) in worker ``w``."""
        actor = self.actors.get(task.spec.actor_id)
        if actor is None or w is None:
            return
        if res.failed:  # retryable: not the constructor, its class could not be loaded (GCS away)
            self._emit(KillWorker(w.worker_id))
            actor.death_error = res.error
            self._dead(actor, f"{'it could not be created' if res.retryable else 'its constructor raised'}:\n"
                              f"{res.error_summary}")
            return
        actor.state, actor.worker_id, actor.pid = ActorState.ALIVE, w.worker_id, w.pid
        self._workers.become_actor(w)
        self._rows.started(actor)
        if actor.no_restart and not actor.ending:  # killed while starting
            self._emit(KillWorker(w.worker_id))
            return
        self._pump(actor)
        self._end_if_idle(actor)

    # ---- calls ---------------------------------------------------------------------

    def hosts(self, actor_id: bytes) -> bool:
        """True when actor ``actor_id`` lives here (or will: its creation is here)."""
        actor = self.actors.get(actor_id)
        return actor is not None and not actor.host_node

    def call(self, task: Task) -> None:
        """An actor call was submitted: queued for the actor here, or for its node."""
        actor_id = task.spec.actor_id
        actor = self.actors.get(actor_id)
        if actor is None or actor.host_node or self._remote.has_calls(actor_id):
            self._objects.await_inputs(task, want=False, remote_ok=True)
            self._remote.call(task)
            return
        self._objects.await_inputs(task, want=True)
        if actor.state == ActorState.DEAD:
            self._fail_call(task, actor.label, actor.death_cause, actor.death_error)
            return
        task.phase = Phase.QUEUED
        actor.queue.append(task)
        self._rows.changed(actor_id)  # its pending count rose: on the next heartbeat's row
        self._pump(actor)

    def _take_back(self, task: Task) -> None:
        """A call that waited for the actor elsewhere: the actor lives here now."""
        actor = self.actors.get(task.spec.actor_id)
        if actor is None or actor.host_node:
            # The row saying so is older than what this node knows (the actor was placed
            # elsewhere since): the call waits for the actor's next row.
            self._remote.call(task)
            return
        if actor.state == ActorState.DEAD:  # it died here before the row saying so came
            self._fail_call(task, actor.label, actor.death_cause, actor.death_error)
            return
        task.phase = Phase.QUEUED
        actor.queue.append(task)
        self._pump(actor)

    def inputs_ready(self, task: Task) -> None:
        """A queued call's inputs are all here now."""
        actor = self.actors.get(task.spec.actor_id)
        if actor is not None and not actor.host_node:
            self._pump(actor)
        self._remote.inputs_ready(task)

    # ---- actors placed on other nodes --------------------------------------------------

    def creation_placed(self, actor_id: bytes, node_id: bytes) -> None:
        """A scheduler placed the creation of our actor on ``node_id``: it lives there, and
        the calls queued here follow it."""
        actor = self.actors.get(actor_id)
        if actor is None:
            return
        calls = list(actor.queue)
        actor.queue.clear()
        if actor.hosted_for:
            # It was placed here for another node's creator, and moved on: that creator
            # keeps the record (it follows the actor's rows), this node keeps nothing.
            self._objects.release_inputs(actor.creation)
            del self.actors[actor_id]
        else:
            actor.host_node = node_id
        self._remote.adopt(actor_id, calls, node_id)

    def creation_reported(self, actor_id: bytes, node_id: bytes, failed: bool) -> None:
        """The creation of our actor ended on node ``node_id``, where a scheduler placed it
        (which writes its rows). Its report may come before the scheduler's answer."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.hosted_for:
            return
        if not actor.host_node and node_id not in (b"", self._node_id) and actor.state != ActorState.DEAD:
            self.creation_placed(actor_id, node_id)
        if not actor.host_node:
            return
        if failed:
            # Its constructor raised (that node writes a DEAD row, which ``row_seen``
            # follows) or its process died (that node restarts it): the rows tell which.
            return
        self._rows.tell_owner(actor, node_id)
        if actor.no_restart:  # killed while it was being placed (or its last handle went)
            self._remote.kill(actor_id, True, graceful=actor.ending)

    def unschedulable(self, actor_id: bytes, cause: str) -> None:
        """No node can ever host the actor (its strategy names a node that is gone)."""
        actor = self.actors.get(actor_id)
        if actor is not None:
            actor.no_restart = True
            self._dead(actor, cause)

    def row_seen(self, row: gcs_pb2.ActorRow) -> None:
        """A row of the GCS ``actors`` table: the calls waiting for that actor here follow it;
        when it is ours and lives elsewhere, our record follows its state."""
        actor = self.actors.get(row.actor_id)
        if actor is not None and self._placed_unheard(actor, row):
            # A scheduler placed our creation on the row's node, and its answer (``spilled``)
            # has not come yet, or came after the creation's report (unary RPCs, in no
            # order) and was dropped: the row tells us where it lives. Before ``row`` below,
            # so that a DEAD row fails the calls queued here.
            self.creation_placed(row.actor_id, row.node_id)
        self._remote.row(row)
        if actor is None or not actor.host_node or row.node_id == self._node_id:
            return
        actor.restarts, actor.pid = max(actor.restarts, row.num_restarts), row.pid
        if row.state == ActorState.ALIVE:
            actor.host_node = row.node_id  # it may have moved on from where it was placed first
        if row.state == ActorState.DEAD and actor.state != ActorState.DEAD:
            self._objects.release_inputs(actor.creation)
            actor.state, actor.death_cause = ActorState.DEAD, row.death_cause

    def _placed_unheard(self, actor: Actor, row: gcs_pb2.ActorRow) -> bool:
        """True when ``row`` shows our actor, created here and not placed anywhere yet to our
        knowledge, living (or dead) on another node: its creation went there."""
        if (actor.host_node or actor.hosted_for or actor.worker_id or row.node_id == self._node_id
                or actor.state == ActorState.DEAD or row.num_restarts < actor.restarts
                or row.state not in (ActorState.ALIVE, ActorState.DEAD)):
            return False
        creation = self._host.task(actor.creation.task_id)
        return creation is None or creation.phase == Phase.SPILLED

    def node_died(self, node_id: bytes) -> None:
        """Node ``node_id`` died: calls sent to actors there wait for their restart (or fail);
        our actors that lived there restart (here first, or placed again) or die; actors
        living here for a creator on that node die with their owner."""
        self._remote.node_died(node_id)
        for actor in list(self.actors.values()):
            if actor.state == ActorState.DEAD:
                continue
            if actor.host_node == node_id:
                self._host_died(actor, node_id)
            elif actor.hosted_for == node_id and actor.options.get("lifetime") != Lifetime.DETACHED:
                self.kill(actor.actor_id, True, f"its creator's node {_ids.short(node_id)} died")

    def node_alive(self, node_id: bytes) -> None:
        """Node ``node_id`` is alive (again): rows naming it are followed again."""
        self._remote.dead_nodes.discard(node_id)

    def _host_died(self, actor: Actor, node_id: bytes) -> None:
        actor.host_node = b""
        cause = f"the node it lived on ({_ids.short(node_id)}) died"
        if actor.no_restart or not (actor.max_restarts < 0 or actor.restarts < actor.max_restarts):
            actor.death_cause = actor.death_cause or cause
            self._dead(actor, actor.death_cause)
            return
        actor.restarts += 1
        actor.state = ActorState.RESTARTING
        actor.worker_id, actor.pid = b"", 0
        self._row(actor)
        creation = common_pb2.TaskSpec()
        creation.CopyFrom(actor.creation)
        creation.attempt = actor.restarts
        creation.spill_count = 0  # it may be placed anywhere again
        self._resubmit_creation(creation)

    def kill_hosted(self, actor_id: bytes, no_restart: bool, graceful: bool = False) -> bool:
        """Another node asks to kill an actor living here: True when it does."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.host_node:
            return False
        if graceful:
            self.kill(actor_id, no_restart, OUT_OF_SCOPE, graceful=True)
        else:
            self.kill(actor_id, no_restart)
        return True

    def anchor_freed(self, oid: bytes) -> None:
        """Nothing holds ``oid`` any more. When it is the anchor of an actor created here
        (``object_id(actor_id, 0)``, which every handle of an unnamed, non-detached actor
        refers to, wherever it went), the actor's last handle is gone: it ends once the
        calls it has are done, as in Ray."""
        actor = self.actors.get(_ids.task_of(oid))
        if actor is not None and not actor.hosted_for and oid == _ids.object_id(actor.actor_id, 0):
            self.kill(actor.actor_id, True, OUT_OF_SCOPE, graceful=True)

    def _end_if_idle(self, actor: Actor) -> None:
        """End an actor whose last handle is gone once no call of it is queued or running."""
        task_of = self._host.task
        if actor.ending and not actor.host_node and not actor.in_flight and not any(
                not t.cancelled and task_of(t.spec.task_id) is t for t in actor.queue):
            actor.ending = False
            self.kill(actor.actor_id, True, actor.death_cause)

    def _pump(self, actor: Actor) -> None:
        """Send the queued calls whose inputs are ready. Order is per caller: a call waiting
        for its inputs holds back the later calls of its caller only."""
        if actor.state != ActorState.ALIVE:
            return
        w = self._workers.get(actor.worker_id)
        if w is None:
            return
        objects = self._objects
        queue = actor.queue
        held: list[Task] = []  # calls that wait, and the later calls of their callers
        waiting: set[bytes] = set()  # those callers
        while queue:
            task = queue.popleft()
            if task.cancelled or self._host.task(task.spec.task_id) is not task:
                # Cancelled, or over already: a call retried after its node died whose results
                # came back from that node after all.
                continue
            if task.missing or task.spec.owner_id in waiting:
                waiting.add(task.spec.owner_id)
                held.append(task)
                continue
            task.phase = Phase.RUNNING
            task.worker_id = w.worker_id
            actor.in_flight[task.spec.task_id] = task
            op = node_pb2.NodeOp()
            ex = op.execute
            ex.spec.CopyFrom(task.spec)
            if actor.creation.strategy.placement_group_id:  # its methods run in its group
                ex.spec.strategy.CopyFrom(actor.creation.strategy)
            for oid in task.spec.arg_refs:
                if objects.fill(ex.args.add(), oid, pin=True):
                    task.pinned.append(oid)
            self._emit(Send(w.client_id, op))
            self._host.event(task, TaskState.RUNNING, worker_pid=w.pid)
        queue.extend(held)

    def call_done(self, task: Task) -> None:
        actor = self.actors.get(task.spec.actor_id)
        if actor is not None:
            actor.in_flight.pop(task.spec.task_id, None)
            # Its pending count fell: the row is written on the next heartbeat, once for a
            # burst of calls (a row per call would be a GCS write per call).
            self._rows.changed(actor.actor_id)
            self._end_if_idle(actor)

    def _fail_call(self, task: Task, label: str, cause: str, error: bytes = b"") -> None:
        err = ActorDiedError(
            f"The actor {label} is dead, so {task.spec.name}() cannot run: {cause}",
            actor_id=task.spec.actor_id.hex(), cause_text=cause, cause_error=error)
        self._host.fail(task, err)

    # ---- death and restarts ----------------------------------------------------------

    def kill(self, actor_id: bytes, no_restart: bool, cause: str = "it was killed with kill()",
             graceful: bool = False) -> None:
        """Kill an actor (here, or through its node); ``graceful``: once the calls it has
        are done (its last handle is gone)."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.host_node:
            if actor is not None and no_restart:
                # ``ending``: a graceful end stays graceful when ``creation_reported`` passes it on
                actor.no_restart, actor.death_cause, actor.ending = True, cause, graceful
            self._remote.kill(actor_id, no_restart, graceful)
            return
        if actor.state == ActorState.DEAD:
            return
        if graceful:
            actor.ending, actor.no_restart, actor.death_cause = True, True, cause
            self._end_if_idle(actor)
            return
        if no_restart:
            actor.no_restart = True
            actor.death_cause = cause
        if actor.worker_id:
            self._emit(KillWorker(actor.worker_id))
            return
        creation = self._host.task(actor.creation.task_id)
        if creation is not None and creation.phase == Phase.RUNNING and creation.worker_id:
            # The constructor is running: stop its process. worker_exited() then ends the
            # creation, and the actor restarts or (no_restart) dies like any dead actor.
            self._emit(KillWorker(creation.worker_id))
        elif no_restart:  # not started yet
            if creation is not None:
                creation.cancelled = True
                self._host.fail(creation, ActorDiedError(
                    "actor killed before it started", actor_id=actor_id.hex(),
                    cause_text=actor.death_cause))
            self._dead(actor, actor.death_cause)

    def creation_worker_died(self, actor_id: bytes, w: Departed, exit_code: int | None) -> None:
        """The process running the constructor of ``actor_id`` died."""
        actor = self.actors.get(actor_id)
        if actor is not None:
            actor.worker_id = w.worker_id
            self.worker_died(w, exit_code)

    def worker_died(self, w: Departed, exit_code: int | None) -> None:
        """An actor's process died: restart the actor or let it die."""
        actor = next((a for a in self.actors.values() if a.worker_id == w.worker_id), None)
        if actor is None or actor.state == ActorState.DEAD:
            return
        actor.worker_id, actor.pid = b"", 0
        cause = actor.death_cause or (f"its process (pid {w.pid}) died unexpectedly "
                                      f"(exit code {exit_code})")
        can_restart = not actor.no_restart and (actor.max_restarts < 0
                                                or actor.restarts < actor.max_restarts)
        # Calls that were running: retried on the new instance (first, in the order they
        # were sent, ahead of the calls still queued), or failed.
        retried: list[Task] = []
        for task in list(actor.in_flight.values()):
            self._host.unpin(task)
            if can_restart and (task.spec.attempt < actor.max_task_retries
                                or actor.max_task_retries < 0) and not task.cancelled:
                task.spec.attempt += 1
                task.phase = Phase.QUEUED
                retried.append(task)
            else:
                self._fail_call(task, actor.label, cause)
        actor.queue.extendleft(reversed(retried))
        actor.in_flight.clear()
        if not can_restart:
            self._dead(actor, cause)
            return
        actor.restarts += 1
        actor.state = ActorState.RESTARTING
        self._row(actor)
        creation = common_pb2.TaskSpec()
        creation.CopyFrom(actor.creation)
        creation.attempt = actor.restarts
        if actor.hosted_for:  # it lives here for another node: it restarts here
            creation.spill_count = max(creation.spill_count, 1)
        self._resubmit_creation(creation)

    def _resubmit_creation(self, spec: common_pb2.TaskSpec) -> None:
        task = self._host.add_task(spec)
        objects = self._objects
        objects.hold_inputs(spec)  # the new attempt holds its inputs like the first did
        objects.await_inputs(task, want=False)
        if not task.missing:
            self._host.make_ready(task)

    def _dead(self, actor: Actor, cause: str) -> None:
        if actor.state == ActorState.DEAD:
            return
        self._objects.release_inputs(actor.creation)
        actor.state = ActorState.DEAD
        actor.death_cause = cause
        while actor.queue:
            self._fail_call(actor.queue.popleft(), actor.label, cause, actor.death_error)
        self._row(actor)
        name = actor.options.get("name")
        if name:
            self._emit(ReleaseActorName(actor.options.get("namespace") or DEFAULT_NAMESPACE, name))

    def owner_gone(self, client_id: bytes, pid: int) -> None:
        """An owner is gone (a driver, an actor's process, a worker that ran a task): the
        actors it created die, except detached ones, wherever they live (as in Ray)."""
        for actor in list(self.actors.values()):
            if (actor.creation.owner_id == client_id and actor.state != ActorState.DEAD
                    and not actor.hosted_for and actor.options.get("lifetime") != Lifetime.DETACHED):
                self.kill(actor.actor_id, True, f"its owner (pid {pid}) exited")

    # ---- the GCS row ---------------------------------------------------------------

    def resend_rows(self) -> int:
        """Write again the rows of the actors alive in a process here, for a GCS back from an
        outage that may have lost the last ones; return how many. (Others write a row at their
        next transition; a pending creation may be placed elsewhere, whose row must win.)"""
        alive = [a for a in self.actors.values()
                 if a.state == ActorState.ALIVE and a.worker_id and not a.host_node]
        self._rows.write_all(alive)
        return len(alive)

    def write_changed_rows(self) -> None:
        """Write the rows of the actors whose calls returned since (the node's heartbeat)."""
        self._rows.write_changed(self.actors.get)
