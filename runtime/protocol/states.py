"""The states of tasks, actors, workers and nodes: one definition each, shared by every part.

They are ``StrEnum`` members, so they travel as the plain strings the protocol carries
(``TaskEvent.state``, ``ActorRow.state``) and compare equal to them: ``row.state ==
TaskState.FINISHED`` holds for a row decoded from the wire.

::

    task      SUBMITTED → (WAITING | QUEUED | SCHEDULED | SPILLED | INFEASIBLE)* → [SENT_AHEAD]
              → RUNNING → FINISHED | FAILED | CANCELLED   (RETRYING goes back to the queue)
    actor     PENDING → ALIVE ⇄ RESTARTING → DEAD
    worker    STARTING → IDLE ⇄ BUSY → DEAD          (BUSY → ACTOR when it becomes one)
    node      ALIVE → DEAD
    placement group   PENDING → CREATED ⇄ RESCHEDULING; any → REMOVED
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    """Where a task is in its life, as events and the GCS tasks table report it."""

    #: The node received it from its owner.
    SUBMITTED = "SUBMITTED"
    #: Its inputs are not all here yet.
    WAITING = "WAITING"
    #: Ready to run, waiting for resources or a worker (also: an actor call in its queue).
    QUEUED = "QUEUED"
    #: A global scheduler placed it on this node.
    SCHEDULED = "SCHEDULED"
    #: Sent to a global scheduler to run on another node.
    SPILLED = "SPILLED"
    #: Sent ahead to a busy worker (pipelining): it starts there when the task before it
    #: ends, and is RUNNING from then on. It holds no resources of its own until then.
    SENT_AHEAD = "SENT_AHEAD"
    #: Running in a worker (its start time is when it began to execute there).
    RUNNING = "RUNNING"
    #: Failed and queued again (a worker or node died, or a retryable exception).
    RETRYING = "RETRYING"
    #: No node has the resources it needs (yet).
    INFEASIBLE = "INFEASIBLE"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


#: A task in one of these states is over: its results (or its error) are final.
TERMINAL_TASK_STATES: frozenset[str] = frozenset(
    {TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELLED})


class ActorState(StrEnum):
    """An actor's state, as the GCS actors table holds it."""

    #: Created, its constructor not finished yet.
    PENDING = "PENDING"
    ALIVE = "ALIVE"
    #: Its process died; the constructor runs again (``max_restarts``).
    RESTARTING = "RESTARTING"
    #: Killed, its constructor raised, its owner exited or its restarts are spent.
    DEAD = "DEAD"


class WorkerState(StrEnum):
    """A worker process, as its node sees it."""

    #: Started, not connected back yet.
    STARTING = "STARTING"
    IDLE = "IDLE"
    #: Running one task (or several nested ones, or tasks sent ahead).
    BUSY = "BUSY"
    #: The dedicated process of an actor.
    ACTOR = "ACTOR"
    DEAD = "DEAD"


class NodeStatus(StrEnum):
    """A node, as the GCS nodes table says (``NodeRow.alive``)."""

    ALIVE = "ALIVE"
    DEAD = "DEAD"

    @classmethod
    def of(cls, alive: bool) -> NodeStatus:
        """The status a ``NodeRow`` with ``alive`` stands for."""
        return cls.ALIVE if alive else cls.DEAD


class ClientKind(StrEnum):
    """What a client connected to a node is (``Hello.kind`` on the wire)."""

    #: A user's program (or a notebook's kernel): it owns tasks and actors.
    DRIVER = "driver"
    #: A worker process of the node: it runs tasks and may submit its own.
    WORKER = "worker"


class Lifetime(StrEnum):
    """An actor's ``lifetime`` option (``ActorRow.detached`` is ``lifetime == DETACHED``)."""

    #: The actor outlives the driver that created it, until it is killed.
    DETACHED = "detached"
    #: The actor dies when the driver that created it exits (the default).
    NON_DETACHED = "non_detached"


class PlacementGroupState(StrEnum):
    """A placement group's state (``PlacementGroupRow.state`` on the wire)."""

    #: Not placed yet: it waits for nodes with room for all its bundles (``why`` says what).
    PENDING = "PENDING"
    #: Every bundle is reserved on its node.
    CREATED = "CREATED"
    #: A node holding some of its bundles died: those are being placed again.
    RESCHEDULING = "RESCHEDULING"
    #: Removed (``remove_placement_group`` or its job ended): its bundles are released.
    REMOVED = "REMOVED"


class PlacementStrategy(StrEnum):
    """How a placement group's bundles spread over nodes (Ray's four strategies)."""

    #: As few nodes as possible (one when it fits), more when it must.
    PACK = "PACK"
    #: Distinct nodes when possible, shared ones when it must.
    SPREAD = "SPREAD"
    #: All bundles on one node, or wait.
    STRICT_PACK = "STRICT_PACK"
    #: Every bundle on a different node, or wait.
    STRICT_SPREAD = "STRICT_SPREAD"


#: The namespace of a named actor created or looked up without ``namespace=``.
DEFAULT_NAMESPACE = "default"
