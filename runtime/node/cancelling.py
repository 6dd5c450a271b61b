"""Cancelling tasks, and what the death of an owner cancels and frees. Pure, a part of the
local scheduler.

A cancel reaches a task wherever it is: waiting or queued here, it ends at once; running
in a worker, the worker is asked to stop it (``force``: the worker is killed); spilled to
another node, that node is asked to cancel it too (``CancelRemote``) while it ends here at
once. ``recursive`` cancels the tasks it submitted as well.

An *owner* is the client (driver or worker) that submitted a task, put an object or
created an actor. When its session ends (its process died or exited; a worker busy or
idle alike), what it owned goes with it, as in Ray: its actors die (unless detached); its
tasks still pending or running are force-cancelled, here and on the nodes they were
spilled to, so their workers are free again; and its objects that others still hold
(borrowers) become an ``OwnerDiedError`` naming it: their data is freed here and on the
nodes keeping copies for this one. So that an idle worker is not reaped from under what it
owns, ``owning`` names the clients that still own something (as Ray's workers refuse to
exit while they own objects).
"""

from __future__ import annotations

from collections.abc import Callable

from runtime import _ids
from runtime.exceptions import OwnerDiedError
from runtime.node.actions import Action, CancelRemote, DropPulled, KillWorker
from runtime.node.actors import ActorTable
from runtime.node.clients import Client, ClientTable
from runtime.node.objects import ErrorEncoder, ObjectTable
from runtime.node.spill import Spilling
from runtime.node.tasks import Phase, Task, TaskHost, cancelled_error
from runtime.node.workers import Worker, WorkerTable
from runtime.protocol import common_pb2, node_pb2
from runtime.protocol.states import ActorState, ClientKind, Lifetime, TaskState


class Cancelling:
    """Cancels, and owners' deaths (see the module docstring)."""

    __slots__ = ("_actors", "_children", "_clients", "_emit", "_encode_error", "_host",
                 "_node_id", "_objects", "_spill", "_tasks", "_workers")

    def __init__(self, node_id: bytes, host: TaskHost, tasks: dict[bytes, Task],
                 children: dict[bytes, set[bytes]], workers: WorkerTable, clients: ClientTable,
                 objects: ObjectTable, spill: Spilling, actors: ActorTable,
                 encode_error: ErrorEncoder, emit: Callable[[Action], None]) -> None:
        self._node_id = node_id
        self._host = host
        self._tasks = tasks
        self._children = children
        self._workers = workers
        self._clients = clients
        self._objects = objects
        self._spill = spill
        self._actors = actors
        self._encode_error = encode_error
        self._emit = emit

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        task = self._tasks.get(task_id)
        if recursive:
            for child in list(self._children.get(task_id, ())):
                self.cancel(child, force, recursive)
        if task is None:
            return
        if task.cancelled and not (force and task.phase == Phase.RUNNING and not task.force_cancelled):
            return  # a repeated cancel; only an escalation to force=True goes on
        task.cancelled = True
        host = self._host
        if task.phase == Phase.RUNNING:
            w = self._workers.get(task.worker_id)
            if w is None:
                return
            if self._workers.drop_ahead(w, task_id):
                # Sent ahead, not started: the worker will skip it; it resolves now.
                self._send_cancel(w, task_id)
                host.fail(task, cancelled_error(task.spec), TaskState.CANCELLED)
                return
            if force:
                task.force_cancelled = True
                self._emit(KillWorker(w.worker_id))
            else:
                self._send_cancel(w, task_id)
            return
        where = self._spill.spilled_to.get(task_id)
        if where is not None:  # running on another node: it stops there too
            self._emit(CancelRemote(where, task_id, force, recursive))
        host.fail(task, cancelled_error(task.spec), TaskState.CANCELLED)
        host.schedule()

    def cancel_forwarded(self, task_id: bytes, home_node_id: bytes, force: bool,
                         recursive: bool) -> None:
        """Node ``home_node_id`` cancels a task it spilled here."""
        home = self._spill.forwarded.get(task_id)
        if home is not None and home.node_id == home_node_id:
            self.cancel(task_id, force, recursive)

    def _send_cancel(self, w: Worker, task_id: bytes) -> None:
        op = node_pb2.NodeOp()
        op.cancel.task_id = task_id
        self._clients.send(w.client_id, op)

    def owning(self) -> set[bytes]:
        """The clients that own something still in use: an object something holds, a task
        not over, or a live actor that dies with its owner."""
        held = self._objects.held
        out = {owner for oid, owner in self._objects.owners.items() if held(oid)}
        out.update(t.spec.owner_id for t in self._tasks.values() if not t.spec.actor_id)
        out.update(a.creation.owner_id for a in self._actors.actors.values()
                   if a.state != ActorState.DEAD and not a.hosted_for
                   and a.options.get("lifetime") != Lifetime.DETACHED)
        return out

    def owner_died(self, client: Client) -> None:
        """``client``'s session ended (its references are dropped already): its actors die
        (unless detached), what it submitted that is not over is cancelled, and what it owned
        that others hold turns into errors."""
        owner = client.client_id
        self._actors.owner_gone(owner, client.pid)
        for task in [t for t in self._tasks.values()
                     if t.spec.owner_id == owner and not t.spec.actor_id and not t.cancelled]:
            self.cancel(task.spec.task_id, True, True)
        borrowed = self._objects.owned_by(owner)
        if not borrowed:
            return
        what = "driver" if client.kind == ClientKind.DRIVER else "worker"
        for oid in borrowed:
            err = OwnerDiedError(
                f"Object {oid.hex()} is lost: its owner, the {what} pid {client.pid} (client "
                f"{_ids.short(owner)}) on node {_ids.short(self._node_id)}, exited or died, "
                "and an object goes with its owner. Pass values (not refs) to work that must "
                "outlive the process that made them, or make them in a detached actor.",
                object_id=oid.hex())
            blob = self._encode_error(err)
            data = common_pb2.ObjectData(object_id=oid, inline=blob, size=len(blob))
            for node_id in self._objects.pulled_by.pop(oid, ()):
                self._emit(DropPulled(node_id, data))
            self._objects.drop_copies(oid)
            self._host.store_object(data)

    def drop_pulled(self, objects: list[common_pb2.ObjectData], node_id: bytes) -> None:
        """Node ``node_id``, where these objects were pulled from, says their owner died:
        the copies go, and what holds them here reads the error given from now on."""
        for data in objects:
            oid = data.object_id
            if self._objects.known(oid):
                self._objects.drop_copies(oid)
                if self._objects.held(oid):
                    self._host.store_object(data)
