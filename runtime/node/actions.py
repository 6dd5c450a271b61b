"""What the node's pure state asks its I/O side to do: one frozen dataclass per kind.

The local scheduler (``state.py``) never touches a socket or a process; each event it is
given appends actions to its outbox, and the manager drains the outbox after the event
and carries every action out through one dispatch table keyed by the action's class
(``dispatch.py``). Actions are carried out in the order they were made.

Sessions and processes of this node::

    Send            one op on a client's Session stream (driver or worker)
    StartWorker     start one worker process (the pool reports it back with its id)
    KillWorker      SIGKILL a worker (force-cancel, an actor killed, a broken stream)
    StopWorker      SIGTERM an idle worker the node no longer needs

The GCS::

    ReportEvent     a task event for the tasks/events tables (batched)
    ObjectLocation  an object sealed in or removed from this node's store (batched)
    PutActor        an actor row, every transition of it, in order
    ReleaseActorName  a dead actor's name is free again

Other nodes and the global schedulers::

    Spill           ask a global scheduler to place a task elsewhere
    Pull            fetch an object's bytes from the node that has them
    ReportHome      send a finished forwarded task's results to its home node
    FreeRemote      tell a node it may drop a copy it keeps for us
    ForwardCalls    pass calls of an actor on to the node where it lives
    KillRemoteActor kill an actor that lives on another node
    ForwardLog      send printed lines to the node of the driver at the root of the task
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runtime.protocol import common_pb2, gcs_pb2, node_pb2, scheduler_pb2


@dataclass(frozen=True, slots=True)
class Send:
    """Queue ``op`` on the Session of client ``client_id`` (dropped if it is gone)."""

    client_id: bytes
    op: node_pb2.NodeOp


@dataclass(frozen=True, slots=True)
class StartWorker:
    """Start one worker process; the pool calls ``worker_starting`` with its id."""

    #: The runtime env it is for ("" none) and that env's JSON (``runtime.api._runtime_env``).
    env_key: str = ""
    runtime_env: str = ""


@dataclass(frozen=True, slots=True)
class KillWorker:
    """SIGKILL worker ``worker_id``; its exit is then reported like any other."""

    worker_id: bytes


@dataclass(frozen=True, slots=True)
class StopWorker:
    """SIGTERM idle worker ``worker_id``, already forgotten by the state."""

    worker_id: bytes


@dataclass(frozen=True, slots=True)
class ReportEvent:
    """A task event for the GCS (batched on a short timer)."""

    event: common_pb2.TaskEvent


@dataclass(frozen=True, slots=True)
class ObjectLocation:
    """Object ``object_id`` of ``size`` bytes is now in (or, ``removed``, gone from) this store;
    ``owner_id``: the client that owns it, when known here."""

    object_id: bytes
    size: int
    removed: bool
    owner_id: bytes = b""


@dataclass(frozen=True, slots=True)
class PutActor:
    """Write the actor's row to the GCS actors table (every transition, in order)."""

    row: gcs_pb2.ActorRow


@dataclass(frozen=True, slots=True)
class ReleaseActorName:
    """A dead actor's ``name`` in ``namespace`` may be taken again."""

    namespace: str
    name: str


class SpillReason(StrEnum):
    """Why a task leaves its node (``ScheduleRequest.reason``)."""

    #: The node's total resources can never hold it: only a scheduler can place it, so the
    #: node keeps asking until one does.
    NEVER_FITS = "never fits here"
    #: It cannot start now, a round of such tasks waits here already, and a peer's last
    #: heartbeat row shows room for it.
    PEER_HAS_ROOM = "busy here, a peer has room"
    #: The local queue is over ``spill_threshold``, it cannot start now, and a peer looks
    #: at least one round of tasks less busy.
    QUEUE_FULL = "queue over threshold"
    #: An actor's creation cannot start here now and a peer looks able to start it.
    ACTOR_BUSY = "actor resources busy here"
    #: Its strategy is ``"SPREAD"``: a scheduler picks the least loaded node (maybe this one).
    SPREAD = "strategy SPREAD"
    #: Its ``NodeAffinitySchedulingStrategy`` names another node.
    AFFINITY = "node affinity to another node"

    @property
    def needs_scheduler(self) -> bool:
        """Only a scheduler can place the task (it never runs here on its own): the node
        keeps asking rather than run it itself when no replica answers."""
        return self in (SpillReason.NEVER_FITS, SpillReason.AFFINITY)


@dataclass(frozen=True, slots=True)
class Spill:
    """Ask a global scheduler to place task ``task_id`` (``request``) on another node."""

    task_id: bytes
    request: scheduler_pb2.ScheduleRequest
    reason: SpillReason


@dataclass(frozen=True, slots=True)
class Pull:
    """Fetch object ``object_id`` from node ``node_id`` into the local store."""

    object_id: bytes
    node_id: bytes


@dataclass(frozen=True, slots=True)
class ReportHome:
    """Send the results of a task run for another node to that node (``address``)."""

    address: str
    request: node_pb2.ReportResultsRequest


@dataclass(frozen=True, slots=True)
class FreeRemote:
    """Node ``node_id`` may drop the copy of ``object_id`` it keeps for this node."""

    node_id: bytes
    object_id: bytes


@dataclass(frozen=True, slots=True)
class CancelRemote:
    """Cancel task ``task_id`` on node ``node_id``, where this node spilled it (``CancelTasks``)."""

    node_id: bytes
    task_id: bytes
    force: bool
    recursive: bool


@dataclass(frozen=True, slots=True)
class DropPulled:
    """Node ``node_id`` pulled a copy of ``data.object_id`` from here: it must drop it and
    keep ``data`` (an error, inline) in its place (``DropObjects``)."""

    node_id: bytes
    data: common_pb2.ObjectData


@dataclass(frozen=True, slots=True)
class ForwardCalls:
    """Forward a batch of calls to the node where their actor lives (``ForwardActorCalls``);
    the answer comes back as ``calls_delivered`` or ``calls_undelivered``."""

    node_id: bytes
    request: node_pb2.ForwardActorCallsRequest


@dataclass(frozen=True, slots=True)
class KillRemoteActor:
    """Kill an actor that lives on node ``node_id`` (``KillHostedActor``)."""

    node_id: bytes
    actor_id: bytes
    no_restart: bool
    #: Its last handle is gone: it ends once the calls it has are done.
    graceful: bool = False


@dataclass(frozen=True, slots=True)
class ForwardLog:
    """Send printed ``lines`` to the node at ``address`` (the root driver's node)."""

    address: str
    lines: node_pb2.LogLines


#: Every action the local scheduler can ask for.
Action = (Send | StartWorker | KillWorker | StopWorker | ReportEvent | ObjectLocation | PutActor
          | ReleaseActorName | Spill | Pull | ReportHome | FreeRemote | ForwardCalls | KillRemoteActor
          | ForwardLog | CancelRemote | DropPulled)

#: The action classes, for dispatch tables to check that they cover every kind.
ACTION_TYPES: tuple[type, ...] = (Send, StartWorker, KillWorker, StopWorker, ReportEvent,
                                  ObjectLocation, PutActor, ReleaseActorName, Spill, Pull,
                                  ReportHome, FreeRemote, ForwardCalls, KillRemoteActor, ForwardLog,
                                  CancelRemote, DropPulled)
