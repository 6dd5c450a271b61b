"""The node's clients (drivers and workers) and the references each one holds. Pure, a part
of the local scheduler.

A client holds ObjectRefs; each ref it holds counts once in the object table, and is
dropped when the client says so (``update_refs``) or disconnects. Objects, errors, logs and
events for a client go out as ``Send`` actions on its session.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from runtime import _ids
from runtime.exceptions import ObjectLostError
from runtime.node.actions import Action, Send
from runtime.node.objects import ErrorEncoder, ObjectTable
from runtime.protocol import node_pb2
from runtime.protocol.states import ClientKind


@dataclass(slots=True)
class Client:
    client_id: bytes
    kind: ClientKind
    pid: int
    worker_id: bytes = b""
    held: Counter[bytes] = field(default_factory=Counter)


class ClientTable:
    """Connected clients and their references (see the module docstring)."""

    __slots__ = ("_emit", "_encode_error", "_node_id", "_objects", "clients")

    def __init__(self, node_id: bytes, objects: ObjectTable, encode_error: ErrorEncoder,
                 emit: Callable[[Action], None]) -> None:
        self._node_id = node_id
        self._objects = objects
        self._encode_error = encode_error
        self._emit = emit
        self.clients: dict[bytes, Client] = {}

    def __contains__(self, client_id: bytes) -> bool:
        return client_id in self.clients

    def connect(self, client_id: bytes, kind: ClientKind, pid: int, worker_id: bytes) -> None:
        self.clients[client_id] = Client(client_id, kind, pid, worker_id)

    def disconnect(self, client_id: bytes) -> Client | None:
        """Forget ``client_id`` and drop every reference it held; the client, if known."""
        client = self.clients.pop(client_id, None)
        if client is not None:
            for object_id, n in client.held.items():
                self._objects.decref(object_id, n)
        return client

    # ---- references ----------------------------------------------------------------

    def hold(self, client_id: bytes, oids: Collection[bytes]) -> None:
        """``client_id`` holds a new reference to each of ``oids``, which it owns (each counts
        in the object table even when the client is not known here)."""
        objects = self._objects
        objects.incref_many(oids)
        owners = objects.owners
        for oid in oids:
            owners[oid] = client_id
        client = self.clients.get(client_id)
        if client is not None:
            held = client.held
            for oid in oids:
                held[oid] += 1

    def update_refs(self, client_id: bytes, add: Iterable[bytes], remove: Iterable[bytes]) -> None:
        client = self.clients.get(client_id)
        held = client.held if client is not None else None
        objects = self._objects
        incref = objects.incref
        for oid in add:
            incref(oid)
            if held is not None:
                held[oid] += 1
        for oid in remove:
            if held is not None:
                n = held.get(oid, 0)
                if n <= 0:
                    continue
                if n == 1:
                    del held[oid]
                else:
                    held[oid] = n - 1
            objects.decref(oid)

    # ---- sending -------------------------------------------------------------------

    def send(self, client_id: bytes, op: node_pb2.NodeOp) -> None:
        self._emit(Send(client_id, op))

    def send_object(self, client_id: bytes, oid: bytes) -> None:
        """Describe object ``oid`` (held here) to ``client_id``."""
        op = node_pb2.NodeOp()
        self._objects.fill(op.object, oid)
        self._emit(Send(client_id, op))

    def send_remote(self, client_id: bytes, oid: bytes, node_id: bytes, size: int) -> None:
        """Tell ``client_id`` (its owner) that ``oid`` is ready on node ``node_id``: no data,
        the client asks for it (and this node pulls it) when it reads the value."""
        op = node_pb2.NodeOp()
        data = op.object
        data.object_id, data.node_id, data.size = oid, node_id, size
        self._emit(Send(client_id, op))

    def send_lost(self, client_id: bytes, oid: bytes) -> None:
        """Tell ``client_id`` that ``oid`` is not known here (freed or never made)."""
        op = node_pb2.NodeOp()
        op.object_error.object_id = oid
        op.object_error.error = self._encode_error(ObjectLostError(
            f"Object {oid.hex()} is not known to node {_ids.short(self._node_id)}: it was "
            "freed (no reference to it remained) or it was never created here.",
            object_id=oid.hex()))
        self._emit(Send(client_id, op))

    def send_event(self, client_id: bytes, task_id: bytes, name: str, state: str, detail: str) -> None:
        """A task event for a connected client (its owner), e.g. that it is infeasible."""
        if client_id in self.clients:
            op = node_pb2.NodeOp()
            ev = op.event
            ev.task_id, ev.name, ev.state, ev.detail = task_id, name, state, detail
            ev.node_id = self._node_id
            self._emit(Send(client_id, op))

    def send_log(self, lines: node_pb2.LogLines) -> bool:
        """Printed lines for their owner, when it is connected here; False when it is not."""
        if lines.owner_id not in self.clients:
            return False
        op = node_pb2.NodeOp()
        op.log.CopyFrom(lines)
        self._emit(Send(lines.owner_id, op))
        return True
