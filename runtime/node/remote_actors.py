"""Calls to actors that live on other nodes. Pure, a part of the local scheduler.

An actor lives on the node that ran its creation (which a scheduler may have placed away
from its creator). A caller connected to any other node submits calls here as usual; this
part keeps them, per actor, in the order they were submitted, and forwards them to the
actor's node in batches (``ForwardCalls``), one batch in flight per actor, so the actor's
node queues them in the same order: each caller's calls keep their order.

Where an actor lives comes from its rows in the GCS ``actors`` table (``row``). Calls wait
while the actor is PENDING or RESTARTING, or not located yet; they are forwarded while it
is ALIVE, and fail with ``ActorDiedError`` once it is DEAD. The results of a forwarded
call come back like those of a spilled task (``ReportResults``; this node is the call's
home). When the actor's node dies, the calls forwarded there and not answered are sent
again after the actor restarts (up to its ``max_task_retries``, in their order, ahead of
the calls not sent yet) or fail.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime import _ids
from runtime.exceptions import ActorDiedError
from runtime.node.actions import Action, ForwardCalls, KillRemoteActor
from runtime.node.objects import ObjectTable
from runtime.node.tasks import Phase, Task, TaskHost
from runtime.protocol import common_pb2, gcs_pb2, node_pb2
from runtime.protocol.states import ActorState, TaskState

#: Calls forwarded in one batch at most.
_BATCH = 256


@dataclass(slots=True)
class RemoteActor:
    """An actor on another node, as the callers on this node see it."""

    actor_id: bytes
    node_id: bytes = b""  #: where it lives, per its last row (b"": not known)
    state: str = ""  #: its last row's state ("" before any)
    label: str = ""
    max_task_retries: int = 0
    death_cause: str = ""
    death_error: bytes = b""  #: its constructor's encoded error, when that is why it died
    queue: deque[Task] = field(default_factory=deque)  #: not forwarded yet, in order
    sending: list[Task] = field(default_factory=list)  #: the batch in flight
    sent: dict[bytes, Task] = field(default_factory=dict)  #: forwarded, not answered (in order)
    kill: bool | None = None  #: a kill to pass on once located (its ``no_restart``)
    #: That kill is graceful (its last handle is gone): passed on once the calls queued
    #: here are forwarded, so they run before it ends.
    graceful: bool = False
    #: A batch was given up (its node died) and its answer is still to come: no batch goes
    #: out until it has, or it would be taken for that batch's (answers carry no batch id).
    given_up: bool = False


class RemoteActors:
    """The actors this node's callers call on other nodes (see the module docstring)."""

    __slots__ = ("_emit", "_host", "_node_id", "_objects", "actors", "dead_nodes", "hand_back")

    def __init__(self, node_id: bytes, host: TaskHost, objects: ObjectTable,
                 emit: Callable[[Action], None]) -> None:
        self._node_id = node_id
        self._host = host
        self._objects = objects
        self._emit = emit
        self.actors: dict[bytes, RemoteActor] = {}
        #: Where calls go when their actor turns out to live here (set by ``ActorTable``).
        self.hand_back: Callable[[Task], None] | None = None
        #: Nodes declared dead (until one comes back): a late row naming one is not followed.
        self.dead_nodes: set[bytes] = set()

    def has_calls(self, actor_id: bytes) -> bool:
        """True while calls of ``actor_id`` wait here, or are out on another node unanswered
        (they come back here if that node dies): a later call must queue behind them."""
        actor = self.actors.get(actor_id)
        return actor is not None and bool(actor.queue or actor.sending or actor.sent)

    def __len__(self) -> int:
        return len(self.actors)

    def _actor(self, actor_id: bytes) -> RemoteActor:
        actor = self.actors.get(actor_id)
        if actor is None:
            actor = self.actors[actor_id] = RemoteActor(actor_id, label=_ids.short(actor_id))
        return actor

    # ---- calls ---------------------------------------------------------------------

    def call(self, task: Task) -> None:
        """A call of an actor that does not live here (its missing inputs noted already)."""
        actor = self._actor(task.spec.actor_id)
        if actor.state == ActorState.DEAD:
            self._fail(task, actor, actor.death_cause)
            return
        task.phase = Phase.QUEUED
        actor.queue.append(task)
        self._pump(actor)

    def adopt(self, actor_id: bytes, calls: list[Task], node_id: bytes) -> None:
        """Calls queued here for an actor whose creation a scheduler placed on ``node_id``:
        they go there, in their order, once it is alive."""
        actor = self._actor(actor_id)
        if actor.state != ActorState.ALIVE or not actor.node_id:  # a row may have told us already
            actor.node_id = node_id
        actor.queue.extend(calls)
        self._pump(actor)

    def inputs_ready(self, task: Task) -> None:
        actor = self.actors.get(task.spec.actor_id)
        if actor is not None:
            self._pump(actor)

    def _pump(self, actor: RemoteActor) -> None:
        """Forward the queued calls whose inputs are known, one batch at a time. Order is per
        caller: a call waiting for its inputs holds back the later calls of its caller only."""
        if actor.sending or actor.given_up or actor.state != ActorState.ALIVE or not actor.node_id:
            return
        req = node_pb2.ForwardActorCallsRequest(actor_id=actor.actor_id)
        objects = self._objects
        queue = actor.queue
        held: list[Task] = []  # calls that wait, and the later calls of their callers
        waiting: set[bytes] = set()
        while queue and len(actor.sending) < _BATCH:
            task = queue.popleft()
            if task.cancelled or not self._live(task):
                continue
            if task.missing or task.spec.owner_id in waiting:
                waiting.add(task.spec.owner_id)
                held.append(task)
                continue
            call = req.calls.add(home_node_id=self._node_id, reason="actor call")
            call.spec.CopyFrom(task.spec)
            objects.describe_inputs(task.spec, call.args)
            objects.lend(actor.node_id, task.spec)
            actor.sending.append(task)
        queue.extendleft(reversed(held))
        if actor.sending:
            self._emit(ForwardCalls(actor.node_id, req))

    def delivered(self, actor_id: bytes, accepted: bool) -> None:
        """The batch in flight reached the actor's node (``accepted``), or that node does not
        hold the actor (any more): the calls wait for its next row."""
        actor = self.actors.get(actor_id)
        if actor is None or self._given_up_answered(actor):
            return
        batch, actor.sending = actor.sending, []
        if accepted:
            for task in batch:
                if not self._live(task):
                    continue  # its results came back before this answer (unary RPCs, in no order)
                task.phase = Phase.SPILLED
                actor.sent[task.spec.task_id] = task
                ev = self._host.event(task, TaskState.SPILLED, detail=f"to node {_ids.short(actor.node_id)}, "
                                                          "where the actor lives")
                ev.target_node_id = actor.node_id
            self._pump(actor)
            self._pass_kill(actor)
        else:
            actor.queue.extendleft(reversed(batch))
            actor.node_id = b""  # wait for a row saying where it is

    def undelivered(self, actor_id: bytes) -> None:
        """The batch in flight could not be sent, or its answer was lost (the I/O side has
        paused already): send it again, in its place at the head (the actor's node ignores
        calls it holds already); the next row or the node's death may send it elsewhere."""
        actor = self.actors.get(actor_id)
        if actor is None or self._given_up_answered(actor):
            return
        batch, actor.sending = actor.sending, []
        actor.queue.extendleft(reversed(batch))
        self._pump(actor)

    def _given_up_answered(self, actor: RemoteActor) -> bool:
        """True when this answer is that of a batch given up (``node_died``): it is ignored,
        and the next batch may go."""
        if not actor.given_up:
            return False
        actor.given_up = False
        self._pump(actor)
        return True

    def call_done(self, task_id: bytes, actor_id: bytes) -> None:
        """A forwarded call's results came back (or it ended here: cancelled)."""
        actor = self.actors.get(actor_id)
        if actor is not None:
            actor.sent.pop(task_id, None)

    def _live(self, task: Task) -> bool:
        """False once ``task`` is over here (its results came back, or it was failed), though
        it may still sit in a queue or a batch: it must not be sent, or retried, again."""
        return self._host.task(task.spec.task_id) is task

    def _fail(self, task: Task, actor: RemoteActor, cause: str) -> None:
        self._host.fail(task, ActorDiedError(
            f"The actor {actor.label} is dead, so {task.spec.name}() cannot run: {cause}",
            actor_id=actor.actor_id.hex(), cause_text=cause, cause_error=actor.death_error))

    # ---- where the actors are ----------------------------------------------------------

    def row(self, row: gcs_pb2.ActorRow) -> None:
        """A row of the GCS ``actors`` table: where an actor lives and in what state."""
        if row.node_id in self.dead_nodes and row.state != ActorState.DEAD:
            return  # written there before it died: a restart's row will follow
        actor = self.actors.get(row.actor_id)
        if actor is None:
            if row.node_id == self._node_id:
                return  # it lives here
            actor = self._actor(row.actor_id)
        actor.state, actor.death_cause, actor.death_error = row.state, row.death_cause, row.death_error
        named = f", name {row.name!r}" if row.name else ""
        actor.label = f"{row.class_name} (id {_ids.short(row.actor_id)}{named})"
        if row.creation_spec:
            actor.max_task_retries = _max_task_retries(row.creation_spec)
        if row.state == ActorState.DEAD:
            self._dead(actor)
            return
        if row.node_id == self._node_id:
            # It lives here now (restarted here): the calls waiting here go to it, in order.
            actor.node_id = b""
            if row.state == ActorState.ALIVE and not actor.sending and self.hand_back is not None:
                calls, actor.queue = list(actor.queue), deque()
                for task in calls:
                    if self._live(task):
                        self.hand_back(task)
            return
        actor.node_id = row.node_id
        self._pump(actor)
        self._pass_kill(actor)

    def kill(self, actor_id: bytes, no_restart: bool, graceful: bool = False) -> None:
        """Kill an actor that lives elsewhere: asked of its node (once known); ``graceful``
        once the calls queued here are forwarded too."""
        actor = self._actor(actor_id)
        if actor.state == ActorState.DEAD:
            return
        actor.kill, actor.graceful = no_restart, graceful
        self._pass_kill(actor)

    def _pass_kill(self, actor: RemoteActor) -> None:
        if actor.kill is None or not actor.node_id or (actor.graceful and (actor.queue or actor.sending)):
            return
        self._emit(KillRemoteActor(actor.node_id, actor.actor_id, actor.kill, actor.graceful))
        actor.kill = None

    def node_died(self, node_id: bytes) -> None:
        """The node of some actors died: their unanswered calls are retried or fail (all of
        them when a row said the actor is dead: nothing will answer them now)."""
        self.dead_nodes.add(node_id)
        for actor in self.actors.values():
            if actor.node_id != node_id:
                continue
            actor.node_id = b""
            dead = actor.state == ActorState.DEAD
            if not dead:
                actor.state = ActorState.RESTARTING  # until a row says otherwise
            retried: list[Task] = []
            for task in [*actor.sent.values(), *actor.sending]:
                spec = task.spec
                if task.cancelled or not self._live(task):
                    continue
                if not dead and (actor.max_task_retries < 0 or spec.attempt < actor.max_task_retries):
                    spec.attempt += 1
                    task.phase = Phase.QUEUED
                    retried.append(task)
                elif dead:
                    self._fail(task, actor, actor.death_cause or "it died")
                else:
                    self._fail(task, actor, f"its node {_ids.short(node_id)} died while {spec.name}() ran "
                                            f"(max_task_retries={actor.max_task_retries} spent)")
            actor.sent.clear()
            if actor.sending:
                actor.given_up = True
            actor.sending = []
            actor.queue.extendleft(reversed(retried))

    def _dead(self, actor: RemoteActor) -> None:
        cause = actor.death_cause or "it died"
        for task in [*actor.sending, *actor.queue]:
            if self._live(task):
                self._fail(task, actor, cause)
        actor.sending = []
        actor.queue.clear()


def _max_task_retries(creation_spec: bytes) -> int:
    spec = common_pb2.TaskSpec.FromString(creation_spec)
    try:
        return int(json.loads(spec.actor_options or b"{}").get("max_task_retries") or 0)
    except ValueError:
        return 0
