"""The node's object table: storing, serving, reference counts and freeing. Pure, a part
of the local scheduler.

An object is ready here when its bytes are inline in the table or sealed in the node's
shared-memory store. Its holders are counted in ``refs``: clients holding ObjectRefs,
tasks taking it as an argument, objects containing it, other nodes keeping a copy for us.
It is freed when the count reaches zero (and so are the objects it contains).

Objects produced elsewhere are known here as *remote* until something needs their bytes;
then they are pulled (one pull per object, however many wait for it) into the local
store. Results this node keeps for another node (a task it ran for that node) are *held*
for it until it releases them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from runtime import _ids
from runtime.exceptions import ObjectLostError
from runtime.node.actions import Action, FreeRemote, ObjectLocation, Pull
from runtime.protocol import common_pb2

if TYPE_CHECKING:
    from runtime.node.tasks import Task


class Store(Protocol):
    """The part of the shared-memory store the local scheduler uses."""

    def seal(self, object_id: bytes, size: int) -> None: ...
    def locate(self, object_id: bytes) -> str: ...
    def pin(self, object_id: bytes) -> None: ...
    def unpin(self, object_id: bytes) -> None: ...
    def free(self, object_id: bytes) -> None: ...


#: Serializes node-made errors (cancelled, worker crashed) into codec bytes.
ErrorEncoder = Callable[[BaseException], bytes]


@dataclass(slots=True)
class Obj:
    inline: bytes | None
    size: int
    nested: list[bytes]
    in_store: bool
    #: Another node that keeps a copy for us (told to drop it when we free ours).
    remote_copy: bytes = b""


@dataclass(slots=True)
class RemoteObject:
    node_id: bytes
    size: int
    nested: list[bytes]


@dataclass(frozen=True, slots=True)
class PullSource:
    """What another node pulling an object held here is sent: the bytes inline, or (None)
    the store's copy, of ``size`` bytes, and the objects it contains."""

    inline: bytes | None
    size: int
    nested: list[bytes]


class ObjectTable:
    """Objects held or known on this node, and who holds and waits for them."""

    __slots__ = ("_emit", "_encode_error", "_node_id", "dep_waiters", "get_waiters", "objects",
                 "pulling", "refs", "remote_holds", "remote_objects", "store")

    def __init__(self, node_id: bytes, store: Store, encode_error: ErrorEncoder,
                 emit: Callable[[Action], None]) -> None:
        self._node_id = node_id
        self.store = store
        self._encode_error = encode_error
        self._emit = emit
        self.objects: dict[bytes, Obj] = {}
        self.refs: Counter[bytes] = Counter()
        #: object id -> tasks waiting for it as an input.
        self.dep_waiters: dict[bytes, list[Task]] = {}
        #: object id -> clients waiting for it in ``get``.
        self.get_waiters: dict[bytes, list[bytes]] = {}
        self.remote_objects: dict[bytes, RemoteObject] = {}
        #: Remote objects on their way here.
        self.pulling: set[bytes] = set()
        #: node id -> objects this node keeps for that node (results of its tasks).
        self.remote_holds: dict[bytes, Counter[bytes]] = {}

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.objects

    def __len__(self) -> int:
        return len(self.objects)

    def known(self, oid: bytes) -> bool:
        """Held here or known to be on another node."""
        return oid in self.objects or oid in self.remote_objects

    # ---- storing and describing ----------------------------------------------------

    def add(self, data: common_pb2.ObjectData) -> bool:
        """Store ``data`` (sealing a shared-memory object); False when it was here already."""
        oid = data.object_id
        if oid in self.objects:
            return False
        nested = list(data.nested_refs)
        refs = self.refs
        for n in nested:
            refs[n] += 1
        if data.shm_path:
            try:
                self.store.seal(oid, data.size)
            except Exception as e:  # noqa: BLE001 - whatever the store raises (ObjectStoreFullError
                # above all) becomes the object's value, which its readers then raise
                blob = self._encode_error(e)
                self.objects[oid] = Obj(blob, len(blob), nested, False)
            else:
                self.objects[oid] = Obj(None, data.size, nested, True)
                self._emit(ObjectLocation(oid, data.size, False))
        else:
            self.objects[oid] = Obj(data.inline, len(data.inline), nested, False)
        return True

    def fill(self, data: common_pb2.ObjectData, oid: bytes, pin: bool = False) -> bool:
        """Describe object ``oid`` in ``data``; True when it was pinned in the store."""
        obj = self.objects[oid]
        data.object_id = oid
        data.size = obj.size
        data.node_id = self._node_id
        if obj.inline is not None:
            data.inline = obj.inline
            return False
        data.shm_path = self.store.locate(oid)
        if pin:
            self.store.pin(oid)
        return pin

    def remote_copy(self, oid: bytes) -> bytes:
        """Another node that keeps a copy of ``oid`` for us (b"" when none)."""
        return self.objects[oid].remote_copy

    def pull_source(self, oid: bytes) -> PullSource | None:
        obj = self.objects.get(oid)
        if obj is None:
            return None
        return PullSource(obj.inline, obj.size, obj.nested)

    # ---- references ----------------------------------------------------------------

    def incref(self, oid: bytes) -> None:
        self.refs[oid] += 1

    def held(self, oid: bytes) -> bool:
        """True when anything holds a reference to ``oid``."""
        return self.refs.get(oid, 0) > 0

    def decref(self, oid: bytes, n: int = 1) -> None:
        """Drop ``n`` references; at zero, free the object (and what it contains)."""
        refs = self.refs
        left = refs.get(oid, 0) - n
        if left > 0:
            refs[oid] = left
            return
        refs.pop(oid, None)
        obj = self.objects.pop(oid, None)
        if obj is None:
            r = self.remote_objects.pop(oid, None)
            if r is not None and oid not in self.pulling:
                self._emit(FreeRemote(r.node_id, oid))
            return
        if obj.remote_copy:
            self._emit(FreeRemote(obj.remote_copy, oid))
        if obj.in_store:
            self.store.free(oid)
            self._emit(ObjectLocation(oid, obj.size, True))
        for nested in obj.nested:
            self.decref(nested)

    # ---- waiting -------------------------------------------------------------------

    def await_inputs(self, task: Task, want: bool) -> None:
        """Note ``task``'s arguments that are not here yet; ``want``: pull remote ones."""
        objects = self.objects
        for oid in task.spec.arg_refs:
            if oid not in objects:
                task.missing.add(oid)
                self.dep_waiters.setdefault(oid, []).append(task)
                if want:
                    self.want(oid)

    def forget_waiter(self, task: Task) -> None:
        """``task`` ended before its inputs arrived."""
        for oid in task.missing:
            waiters = self.dep_waiters.get(oid)
            if waiters is not None and task in waiters:
                waiters.remove(task)

    def wait_get(self, oid: bytes, client_id: bytes, once: bool = False) -> None:
        """Client ``client_id`` waits for ``oid`` (``once``: unless it waits already)."""
        waiters = self.get_waiters.setdefault(oid, [])
        if not once or client_id not in waiters:
            waiters.append(client_id)

    def awaited(self, oid: bytes) -> bool:
        """True when a client or a task waits for ``oid``."""
        return oid in self.get_waiters or oid in self.dep_waiters

    # ---- remote objects ------------------------------------------------------------

    def add_remote(self, oid: bytes, node_id: bytes, size: int, nested: list[bytes]) -> None:
        """``oid`` is on node ``node_id``; pulled here when needed."""
        self.remote_objects[oid] = RemoteObject(node_id, size, nested)

    def remote(self, oid: bytes) -> RemoteObject:
        return self.remote_objects[oid]

    def want(self, oid: bytes) -> None:
        """Make sure a remote object is on its way here."""
        r = self.remote_objects.get(oid)
        if r is None or oid in self.pulling:
            return
        self.pulling.add(oid)
        self._emit(Pull(oid, r.node_id))

    def pull_done(self, oid: bytes) -> tuple[bool, bytes]:
        """A pull of ``oid`` ended with its bytes in the store: (still wanted, node it
        came from). When nothing holds it any more, it is freed here and there."""
        self.pulling.discard(oid)
        r = self.remote_objects.pop(oid, None)
        source = r.node_id if r is not None else b""
        if self.refs.get(oid, 0) <= 0:
            self.store.free(oid)
            if r is not None:
                self._emit(FreeRemote(r.node_id, oid))
            return False, source
        return True, source

    def set_remote_copy(self, oid: bytes, node_id: bytes) -> None:
        obj = self.objects.get(oid)
        if obj is not None and node_id:
            obj.remote_copy = node_id

    def pull_lost(self, oid: bytes, why: str) -> common_pb2.ObjectData:
        """A pull of ``oid`` failed: the object to store in its place (its error)."""
        self.pulling.discard(oid)
        r = self.remote_objects.pop(oid, None)
        where = _ids.short(r.node_id) if r is not None else "another node"
        err = ObjectLostError(f"Object {oid.hex()} is lost: pulling it from node {where} failed "
                              f"({why}). The node may have died.", object_id=oid.hex())
        blob = self._encode_error(err)
        return common_pb2.ObjectData(object_id=oid, inline=blob, size=len(blob))

    def remote_on(self, node_id: bytes) -> list[bytes]:
        """Remote objects known to be on node ``node_id``."""
        return [oid for oid, r in self.remote_objects.items() if r.node_id == node_id]

    # ---- copies kept for other nodes -----------------------------------------------

    def holds_for(self, node_id: bytes) -> Counter[bytes]:
        """The objects kept for node ``node_id`` (a live counter to add to)."""
        return self.remote_holds.setdefault(node_id, Counter())

    def release_remote_holds(self, ids: list[bytes], node_id: bytes | None = None) -> None:
        """Another node no longer needs objects we keep for it."""
        for holds in ([self.remote_holds.get(node_id, Counter())] if node_id
                      else list(self.remote_holds.values())):
            for oid in ids:
                if holds.get(oid, 0) > 0:
                    holds[oid] -= 1
                    if not holds[oid]:
                        del holds[oid]
                    self.decref(oid)
                    break

    def drop_holds(self, node_id: bytes) -> None:
        """Node ``node_id`` died: what we kept for it is not needed any more."""
        holds = self.remote_holds.pop(node_id, None)
        if holds:
            for oid, n in holds.items():
                self.decref(oid, n)
