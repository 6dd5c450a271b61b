"""Carrying out the local scheduler's actions: one table, keyed by the action's class.

The manager drains ``LocalScheduler.take_actions()`` after every event and hands the list
to :func:`carry_out`, which looks each action's class up in :data:`TABLE` and calls its
handler with the node's :class:`Outlets`: the few services that do I/O (the sessions, the
worker launcher, the GCS reporter, the peers). Adding an action class to
``runtime/node/actions.py`` without a handler here fails at import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.node.actions import (
    ACTION_TYPES,
    Action,
    CancelRemote,
    DropPulled,
    ForwardCalls,
    ForwardLog,
    FreeRemote,
    KillRemoteActor,
    KillWorker,
    ObjectLocation,
    Pull,
    PutActor,
    ReleaseActorName,
    ReportEvent,
    ReportHome,
    Send,
    Spill,
    StartWorker,
    StopWorker,
)
from runtime.protocol import node_pb2

logger = logging.getLogger(__name__)


class SessionOutlet(Protocol):
    def send(self, client_id: bytes, op: node_pb2.NodeOp) -> None: ...


class WorkerOutlet(Protocol):
    def start_worker(self, counted: bool = True, env_key: str = "", runtime_env: str = "") -> None: ...
    def kill(self, worker_id: bytes) -> None: ...
    def stop(self, worker_id: bytes) -> None: ...


class GcsOutlet(Protocol):
    def report_event(self, action: ReportEvent) -> None: ...
    def object_location(self, action: ObjectLocation) -> None: ...
    def put_actor(self, action: PutActor) -> None: ...
    def release_actor_name(self, action: ReleaseActorName) -> None: ...


class PeerOutlet(Protocol):
    def spill(self, action: Spill) -> None: ...
    def pull(self, action: Pull) -> None: ...
    def report_home(self, action: ReportHome) -> None: ...
    def free_remote(self, action: FreeRemote) -> None: ...
    def forward_log(self, action: ForwardLog) -> None: ...
    def forward_calls(self, action: ForwardCalls) -> None: ...
    def kill_remote_actor(self, action: KillRemoteActor) -> None: ...
    def cancel_remote(self, action: CancelRemote) -> None: ...
    def drop_pulled(self, action: DropPulled) -> None: ...


@dataclass(frozen=True, slots=True)
class Outlets:
    """Where actions go: what the handlers of :data:`TABLE` may use, and nothing else."""

    sessions: SessionOutlet
    workers: WorkerOutlet
    gcs: GcsOutlet
    peers: PeerOutlet


def _send(o: Outlets, a: Send) -> None:
    o.sessions.send(a.client_id, a.op)


def _start_worker(o: Outlets, a: StartWorker) -> None:
    o.workers.start_worker(True, a.env_key, a.runtime_env)


def _kill_worker(o: Outlets, a: KillWorker) -> None:
    o.workers.kill(a.worker_id)


def _stop_worker(o: Outlets, a: StopWorker) -> None:
    o.workers.stop(a.worker_id)


def _report_event(o: Outlets, a: ReportEvent) -> None:
    o.gcs.report_event(a)


def _object_location(o: Outlets, a: ObjectLocation) -> None:
    o.gcs.object_location(a)


def _put_actor(o: Outlets, a: PutActor) -> None:
    o.gcs.put_actor(a)


def _release_actor_name(o: Outlets, a: ReleaseActorName) -> None:
    o.gcs.release_actor_name(a)


def _spill(o: Outlets, a: Spill) -> None:
    o.peers.spill(a)


def _pull(o: Outlets, a: Pull) -> None:
    o.peers.pull(a)


def _report_home(o: Outlets, a: ReportHome) -> None:
    o.peers.report_home(a)


def _free_remote(o: Outlets, a: FreeRemote) -> None:
    o.peers.free_remote(a)


def _forward_log(o: Outlets, a: ForwardLog) -> None:
    o.peers.forward_log(a)


def _forward_calls(o: Outlets, a: ForwardCalls) -> None:
    o.peers.forward_calls(a)


def _kill_remote_actor(o: Outlets, a: KillRemoteActor) -> None:
    o.peers.kill_remote_actor(a)


def _cancel_remote(o: Outlets, a: CancelRemote) -> None:
    o.peers.cancel_remote(a)


def _drop_pulled(o: Outlets, a: DropPulled) -> None:
    o.peers.drop_pulled(a)


Handler = Callable[[Outlets, Any], None]

#: The handler of each action class.
TABLE: dict[type, Handler] = {
    Send: _send, StartWorker: _start_worker, KillWorker: _kill_worker, StopWorker: _stop_worker,
    ReportEvent: _report_event, ObjectLocation: _object_location, PutActor: _put_actor,
    ReleaseActorName: _release_actor_name, Spill: _spill, Pull: _pull, ReportHome: _report_home,
    FreeRemote: _free_remote, ForwardCalls: _forward_calls, KillRemoteActor: _kill_remote_actor,
    ForwardLog: _forward_log, CancelRemote: _cancel_remote, DropPulled: _drop_pulled,
}


def missing_handlers(table: dict[type, Handler] | None = None) -> list[str]:
    """Names of the action classes ``table`` (default :data:`TABLE`) has no handler for."""
    table = TABLE if table is None else table
    return [t.__name__ for t in ACTION_TYPES if t not in table]


_MISSING = missing_handlers()
if _MISSING:
    raise ImportError(f"runtime.node.dispatch has no handler for {', '.join(_MISSING)}")


def carry_out(outlets: Outlets, actions: Iterable[Action]) -> None:
    """Carry out ``actions`` in order."""
    table = TABLE
    for action in actions:
        table[type(action)](outlets, action)
