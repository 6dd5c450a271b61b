"""The rows of a node's actors in the GCS actors table, and the word to their owners that
they started. Pure, a part of ``actors.py``.

Every transition of an actor writes its row at once (a ``PutActor`` action, in order). Its
count of pending calls changes between transitions: a call returning only marks the actor
*changed*, and ``write_changed`` (on the node's heartbeat) writes each changed actor's row
once, however many of its calls returned meanwhile, so the count falls as calls return
without a GCS write per call.

A row reaches the GCS with the node's next report (``event_flush_ms``). The actor's owner
does not wait for it: when a constructor returns, ``started`` also sends the owner a
FINISHED event of the creation task (on its session, ahead of any call's result), so a
handle there says ALIVE at once (``runtime.api._task_events``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from runtime.node.actions import Action, PutActor, Send
from runtime.protocol import gcs_pb2, node_pb2
from runtime.protocol.states import DEFAULT_NAMESPACE, ActorState, Lifetime, TaskState

if TYPE_CHECKING:
    from runtime.node.actors import Actor


class ActorRows:
    """Writes actor rows: at each transition, and for actors whose calls returned."""

    __slots__ = ("_changed", "_emit", "_node_id")

    def __init__(self, node_id: bytes, emit: Callable[[Action], None]) -> None:
        self._node_id = node_id
        self._emit = emit
        #: Actors whose calls returned since their row was last written.
        self._changed: set[bytes] = set()

    def changed(self, actor_id: bytes) -> None:
        """A call of ``actor_id`` returned: its row is written by the next ``write_changed``."""
        self._changed.add(actor_id)

    def write_changed(self, actors: Callable[[bytes], Actor | None]) -> int:
        """Write the row of each changed actor alive in a process here (``actors`` looks one
        up); return how many were written. Others are left to their next transition: a dead
        actor's last row is final, and a pending one may be placed elsewhere, whose row must
        win."""
        changed = self._changed
        if not changed:
            return 0
        self._changed = set()
        n = 0
        for actor_id in changed:
            actor = actors(actor_id)
            if (actor is not None and actor.state == ActorState.ALIVE and actor.worker_id
                    and not actor.host_node):
                self.write(actor)
                n += 1
        return n

    def started(self, actor: Actor) -> None:
        """``actor``'s constructor returned here: write its row, and tell its owner."""
        self.write(actor)
        self.tell_owner(actor, self._node_id)

    def tell_owner(self, actor: Actor, node_id: bytes) -> None:
        """Tell ``actor``'s owner that its constructor returned on ``node_id`` (dropped when
        the owner is not connected to this node: its handles then read the GCS row)."""
        spec = actor.creation
        op = node_pb2.NodeOp()
        ev = op.event
        ev.task_id, ev.name, ev.job_id, ev.actor_id = spec.task_id, spec.name, spec.job_id, spec.actor_id
        ev.state, ev.node_id, ev.attempt = TaskState.FINISHED, node_id, actor.restarts
        self._emit(Send(spec.owner_id, op))

    def write_all(self, actors: Iterable[Actor]) -> None:
        for actor in actors:
            self.write(actor)

    def write(self, actor: Actor) -> None:
        """Write ``actor``'s row now (a transition): it carries its pending calls too."""
        self._changed.discard(actor.actor_id)
        o = actor.options
        row = gcs_pb2.ActorRow(
            actor_id=actor.actor_id, class_name=o.get("class_name", ""), name=o.get("name") or "",
            namespace=o.get("namespace") or DEFAULT_NAMESPACE, state=actor.state, node_id=self._node_id,
            pid=actor.pid, num_restarts=actor.restarts, max_restarts=actor.max_restarts,
            death_cause=actor.death_cause, death_error=actor.death_error, job_id=actor.creation.job_id,
            detached=o.get("lifetime") == Lifetime.DETACHED, owner_id=actor.creation.owner_id,
            start_time=actor.created, creation_spec=actor.creation.SerializeToString(),
            pending_calls=len(actor.queue) + len(actor.in_flight),
            worker_id=actor.worker_id)
        self._emit(PutActor(row))
