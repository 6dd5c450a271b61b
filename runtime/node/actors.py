"""Actors on a node: creation, ordered calls, restarts, death. Pure, part of NodeState.

An actor is created by a creation task that runs like any task (resources, inputs); the
worker that ran it becomes the actor's dedicated process and keeps the actor's resources
until the actor dies. Calls go into the actor's FIFO in the order the node receives them
(so each caller's calls keep their submission order); the head call is sent to the actor
as soon as its inputs are ready, and the actor's process runs calls in order (or
concurrently, when it was created with ``max_concurrency > 1`` or has async methods).

When the actor's process dies it restarts (the creation task runs again) up to
``max_restarts`` times; calls queued meanwhile wait for the new instance; calls that were
in flight are re-sent up to ``max_task_retries`` times or fail with ``ActorDiedError``.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime import _ids
from runtime.protocol import common_pb2, gcs_pb2, node_pb2

if TYPE_CHECKING:
    from runtime.node.state import NodeState, Task, Worker

ACTOR_ROW = "actor_row"     # (ACTOR_ROW, ActorRow) for the GCS actors table
KV_DELETE = "kv_delete"     # (KV_DELETE, key) e.g. a dead actor's name


def name_key(namespace: str, name: str) -> bytes:
    """The GCS kv key under which a named actor is registered."""
    return f"actor_name:{namespace}:{name}".encode()


@dataclass(slots=True)
class Actor:
    actor_id: bytes
    creation: common_pb2.TaskSpec
    options: dict[str, Any]
    state: str = "PENDING"                 # PENDING ALIVE RESTARTING DEAD
    worker_id: bytes = b""
    pid: int = 0
    queue: deque[Task] = field(default_factory=deque)
    in_flight: dict[bytes, Task] = field(default_factory=dict)
    restarts: int = 0
    death_cause: str = ""
    no_restart: bool = False
    created: float = 0.0

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


class ActorMixin:
    """Actor handling for NodeState (see the module docstring)."""

    actors: dict[bytes, Actor]

    # ---- creation ------------------------------------------------------------------

    def _actor_created_submit(self: NodeState, task: Task) -> None:
        spec = task.spec
        try:
            options = json.loads(spec.actor_options or b"{}")
        except ValueError:
            options = {}
        actor = Actor(spec.actor_id, spec, options, created=self.clock())
        self.actors[spec.actor_id] = actor
        # The constructor's arguments outlive its first run: a restart runs it again.
        for oid in (*spec.arg_refs, *spec.nested_refs):
            self.refs[oid] += 1
        self._actor_row(actor)

    def _actor_creation_done(self: NodeState, task: Task, w: Worker | None,
                             res: node_pb2.TaskResult) -> None:
        actor = self.actors.get(task.spec.actor_id)
        if actor is None or w is None:
            return
        if res.failed:
            self.outbox.append(("kill", w.worker_id))
            self._actor_dead(actor, f"its constructor raised:\n{res.error_summary}")
            return
        actor.state, actor.worker_id, actor.pid = "ALIVE", w.worker_id, w.pid
        w.state = "ACTOR"
        self._actor_row(actor)
        if actor.no_restart:  # killed while starting
            self.outbox.append(("kill", w.worker_id))
            return
        self._pump(actor)

    # ---- calls ---------------------------------------------------------------------

    def _actor_call_submit(self: NodeState, task: Task) -> None:
        actor = self.actors.get(task.spec.actor_id)
        if actor is None or actor.state == "DEAD":
            cause = actor.death_cause if actor is not None else "it is not known on this node"
            label = actor.label if actor is not None else _ids.short(task.spec.actor_id)
            self._fail_actor_call(task, label, cause)
            return
        task.state = "QUEUED"
        actor.queue.append(task)
        self._pump(actor)

    def _pump(self: NodeState, actor: Actor) -> None:
        """Send the calls at the head of the queue whose inputs are ready."""
        if actor.state != "ALIVE":
            return
        w = self.workers.get(actor.worker_id)
        if w is None:
            return
        while actor.queue:
            task = actor.queue[0]
            if task.cancelled:
                actor.queue.popleft()
                continue
            if task.missing:
                return
            actor.queue.popleft()
            task.state = "RUNNING"
            task.worker_id = w.worker_id
            actor.in_flight[task.spec.task_id] = task
            op = node_pb2.NodeOp()
            ex = op.execute
            ex.spec.CopyFrom(task.spec)
            for oid in task.spec.arg_refs:
                if self._fill(ex.args.add(), oid, pin=True):
                    task.pinned.append(oid)
            self.outbox.append(("send", w.client_id, op))
            self._event(task, "RUNNING", worker_pid=w.pid)

    def _actor_call_done(self: NodeState, task: Task) -> None:
        actor = self.actors.get(task.spec.actor_id)
        if actor is not None:
            actor.in_flight.pop(task.spec.task_id, None)

    def _fail_actor_call(self: NodeState, task: Task, label: str, cause: str) -> None:
        from runtime.exceptions import ActorDiedError
        err = ActorDiedError(
            f"The actor {label} is dead, so {task.spec.name}() cannot run: {cause}",
            actor_id=task.spec.actor_id.hex(), cause_text=cause)
        self._fail(task, err)

    # ---- death and restarts ----------------------------------------------------------

    def kill_actor(self: NodeState, actor_id: bytes, no_restart: bool,
                   cause: str = "it was killed with kill()") -> None:
        actor = self.actors.get(actor_id)
        if actor is None or actor.state == "DEAD":
            return
        if no_restart:
            actor.no_restart = True
            actor.death_cause = cause
        if actor.worker_id:
            self.outbox.append(("kill", actor.worker_id))
            return
        creation = self.tasks.get(actor.creation.task_id)
        if creation is not None and creation.state == "RUNNING" and creation.worker_id:
            # The constructor is running: stop its process. worker_exited() then ends the
            # creation, and the actor restarts or (no_restart) dies like any dead actor.
            self.outbox.append(("kill", creation.worker_id))
        elif no_restart:  # not started yet
            if creation is not None:
                creation.cancelled = True
                self._fail(creation, RuntimeError("actor killed before it started"))
            self._actor_dead(actor, actor.death_cause)

    def _actor_worker_died(self: NodeState, w: Worker, exit_code: int | None) -> None:
        actor = next((a for a in self.actors.values() if a.worker_id == w.worker_id), None)
        if actor is None or actor.state == "DEAD":
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
            self._unpin(task)
            if can_restart and (task.spec.attempt < actor.max_task_retries
                                or actor.max_task_retries < 0) and not task.cancelled:
                task.spec.attempt += 1
                task.state = "QUEUED"
                retried.append(task)
            else:
                self._fail_actor_call(task, actor.label, cause)
        actor.queue.extendleft(reversed(retried))
        actor.in_flight.clear()
        if not can_restart:
            self._actor_dead(actor, cause)
            return
        actor.restarts += 1
        actor.state = "RESTARTING"
        self._actor_row(actor)
        creation = common_pb2.TaskSpec()
        creation.CopyFrom(actor.creation)
        creation.attempt = actor.restarts
        self._resubmit_creation(creation)

    def _resubmit_creation(self: NodeState, spec: common_pb2.TaskSpec) -> None:
        from runtime.node.state import Task
        task = Task(spec, dict(spec.resources), set())
        self.tasks[spec.task_id] = task
        for oid in spec.arg_refs:  # the new attempt holds its inputs like the first did
            self.refs[oid] += 1
        for oid in spec.nested_refs:
            self.refs[oid] += 1
        for oid in spec.arg_refs:
            if oid not in self.objects:
                task.missing.add(oid)
                self.dep_waiters.setdefault(oid, []).append(task)
        if not task.missing:
            self._make_ready(task)

    def _actor_dead(self: NodeState, actor: Actor, cause: str) -> None:
        if actor.state == "DEAD":
            return
        for oid in (*actor.creation.arg_refs, *actor.creation.nested_refs):
            self._decref(oid)
        actor.state = "DEAD"
        actor.death_cause = cause
        while actor.queue:
            self._fail_actor_call(actor.queue.popleft(), actor.label, cause)
        self._actor_row(actor)
        name = actor.options.get("name")
        if name:
            self.outbox.append((KV_DELETE, name_key(actor.options.get("namespace") or "default", name)))

    def _owner_gone(self: NodeState, client_id: bytes, pid: int) -> None:
        for actor in list(self.actors.values()):
            if (actor.creation.owner_id == client_id and actor.state != "DEAD"
                    and actor.options.get("lifetime") != "detached"):
                self.kill_actor(actor.actor_id, True, f"its owner (pid {pid}) exited")

    # ---- the GCS row ---------------------------------------------------------------

    def _actor_row(self: NodeState, actor: Actor) -> None:
        o = actor.options
        row = gcs_pb2.ActorRow(
            actor_id=actor.actor_id, class_name=o.get("class_name", ""), name=o.get("name") or "",
            namespace=o.get("namespace") or "default", state=actor.state, node_id=self.node_id,
            pid=actor.pid, num_restarts=actor.restarts, max_restarts=actor.max_restarts,
            death_cause=actor.death_cause, job_id=actor.creation.job_id,
            detached=o.get("lifetime") == "detached", owner_id=actor.creation.owner_id,
            start_time=actor.created, creation_spec=actor.creation.SerializeToString(),
            pending_calls=len(actor.queue) + len(actor.in_flight),
            worker_id=actor.worker_id)
        self.outbox.append((ACTOR_ROW, row))
