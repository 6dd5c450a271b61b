"""Objects on a node: storing, serving, reference counts and freeing. Pure, part of NodeState.

An object is ready here when its bytes are inline in the state or sealed in the node's
shared-memory store. Its holders are counted in ``refs``: clients holding ObjectRefs,
tasks taking it as an argument, objects containing it, other nodes keeping a copy for us.
It is freed when the count reaches zero (and so are the objects it contains).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime import _ids
from runtime.node.spill import FREE_REMOTE
from runtime.protocol import common_pb2, node_pb2

if TYPE_CHECKING:
    from runtime.node.state import NodeState

SEND = "send"
OBJECT = "object"


@dataclass(slots=True)
class Obj:
    inline: bytes | None
    size: int
    nested: list[bytes]
    in_store: bool
    #: Another node that keeps a copy for us (told to drop it when we free ours).
    remote_copy: bytes = b""


class ObjectsMixin:
    """Object storage and reference counting for NodeState."""

    def _store(self: NodeState, data: common_pb2.ObjectData) -> None:
        oid = data.object_id
        if oid in self.objects:
            return
        nested = list(data.nested_refs)
        for n in nested:
            self.refs[n] += 1
        if data.shm_path:
            try:
                self.store.seal(oid, data.size)
            except Exception as e:  # ObjectStoreFullError: the object becomes that error
                blob = self.encode_error(e)
                self.objects[oid] = Obj(blob, len(blob), nested, False)
            else:
                self.objects[oid] = Obj(None, data.size, nested, True)
                self.outbox.append((OBJECT, oid, data.size, False))
        else:
            self.objects[oid] = Obj(data.inline, len(data.inline), nested, False)
        self._object_ready(oid)

    def _object_ready(self: NodeState, oid: bytes) -> None:
        waiters = self.dep_waiters.pop(oid, None)
        if waiters:
            for task in waiters:
                task.missing.discard(oid)
                if task.missing:
                    continue
                if task.state == "WAITING":
                    self._make_ready(task)
                elif task.state == "QUEUED":
                    actor = self.actors.get(task.spec.actor_id)
                    if actor is not None:
                        self._pump(actor)
            self._schedule()
        getters = self.get_waiters.pop(oid, None)
        if getters:
            for cid in getters:
                if cid in self.clients:
                    op = node_pb2.NodeOp()
                    self._fill(op.object, oid)
                    self.outbox.append((SEND, cid, op))

    def put(self: NodeState, client_id: bytes, data: common_pb2.ObjectData) -> None:
        client = self.clients.get(client_id)
        self.refs[data.object_id] += 1
        if client is not None:
            client.held[data.object_id] += 1
        self._store(data)

    def get(self: NodeState, client_id: bytes, object_ids: Iterable[bytes]) -> None:
        for oid in object_ids:
            if oid in self.objects:
                op = node_pb2.NodeOp()
                self._fill(op.object, oid)
                self.outbox.append((SEND, client_id, op))
            elif self.refs.get(oid, 0) > 0 or _ids.task_of(oid) in self.tasks:
                self.get_waiters.setdefault(oid, []).append(client_id)
                self._want(oid)
            else:
                from runtime.exceptions import ObjectLostError
                op = node_pb2.NodeOp()
                op.object_error.object_id = oid
                op.object_error.error = self.encode_error(ObjectLostError(
                    f"Object {oid.hex()} is not known to node {_ids.short(self.node_id)}: it was "
                    "freed (no reference to it remained) or it was never created here.",
                    object_id=oid.hex()))
                self.outbox.append((SEND, client_id, op))

    def update_refs(self: NodeState, client_id: bytes, add: Iterable[bytes], remove: Iterable[bytes]) -> None:
        client = self.clients.get(client_id)
        for oid in add:
            self.refs[oid] += 1
            if client is not None:
                client.held[oid] += 1
        for oid in remove:
            if client is not None:
                n = client.held.get(oid, 0)
                if n <= 0:
                    continue
                if n == 1:
                    del client.held[oid]
                else:
                    client.held[oid] = n - 1
            self._decref(oid)

    def _decref(self: NodeState, oid: bytes, n: int = 1) -> None:
        left = self.refs.get(oid, 0) - n
        if left > 0:
            self.refs[oid] = left
            return
        self.refs.pop(oid, None)
        obj = self.objects.pop(oid, None)
        if obj is None:
            r = self.remote_objects.pop(oid, None)
            if r is not None and oid not in self.pulling:
                self.outbox.append((FREE_REMOTE, r.node_id, oid))
            return
        if obj.remote_copy:
            self.outbox.append((FREE_REMOTE, obj.remote_copy, oid))
        if obj.in_store:
            self.store.free(oid)
            self.outbox.append((OBJECT, oid, obj.size, True))
        for nested in obj.nested:
            self._decref(nested)

