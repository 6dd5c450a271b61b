"""The node's object table: storing, serving, reference counts and freeing. Pure, a part
of the local scheduler.

An object is ready here when its bytes are inline in the table or sealed in the node's
shared-memory store. Its holders are counted: clients holding ObjectRefs,
tasks taking it as an argument, objects containing it, other nodes keeping a copy for us.
It is freed when the count reaches zero (and so are the objects it contains).

Objects produced elsewhere are known here as *remote* until something needs their bytes;
then they are pulled (one pull per object, however many wait for it) into the local
store. Results this node keeps for another node (a task it ran for that node) are *held*
for it until it releases them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from runtime.node.actions import Action, FreeRemote, ObjectLocation, Pull
from runtime.protocol import common_pb2

if TYPE_CHECKING:
    from runtime.node.tasks import Task


def _nothing(oid: bytes) -> None:
    """The default of the table's ``rebuild`` hook."""


class Store(Protocol):
    """The part of the shared-memory store the local scheduler uses."""

    def seal(self, object_id: bytes, size: int) -> None: ...
    def locate(self, object_id: bytes) -> str: ...
    def pin(self, object_id: bytes) -> None: ...
    def unpin(self, object_id: bytes) -> None: ...
    def free(self, object_id: bytes) -> None: ...
    def mark_mapped(self, object_ids: Iterable[bytes]) -> None: ...


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

    __slots__ = ("_dep_waiters", "_emit", "_encode_error", "_get_waiters", "_node_id", "_refs",
                 "_store", "lost", "objects", "on_free", "owners", "pulled_by", "pulling",
                 "rebuild", "remote_holds", "remote_objects")

    def __init__(self, node_id: bytes, store: Store, encode_error: ErrorEncoder,
                 emit: Callable[[Action], None]) -> None:
        self._node_id = node_id
        self._store = store
        self._encode_error = encode_error
        self._emit = emit
        self.objects: dict[bytes, Obj] = {}
        self._refs: Counter[bytes] = Counter()
        #: object id -> tasks waiting for it as an input.
        self._dep_waiters: dict[bytes, list[Task]] = {}
        #: object id -> clients waiting for it in ``get``.
        self._get_waiters: dict[bytes, list[bytes]] = {}
        self.remote_objects: dict[bytes, RemoteObject] = {}
        #: Remote objects on their way here.
        self.pulling: set[bytes] = set()
        #: node id -> objects this node keeps for that node (results of its tasks).
        self.remote_holds: dict[bytes, Counter[bytes]] = {}
        #: Objects made here for a client (task returns, puts): id -> the owner's client id.
        self.owners: dict[bytes, bytes] = {}
        #: Owned objects other nodes pulled a copy of: id -> those nodes.
        self.pulled_by: dict[bytes, set[bytes]] = {}
        #: Held objects whose every copy is gone, to rebuild when read: id -> why lost.
        self.lost: dict[bytes, str] = {}
        #: Called with an object's id when nothing holds it any more (lineage drops it; the
        #: actors end the one whose anchor it was).
        self.on_free: list[Callable[[bytes], None]] = []
        #: Called with a lost object's id when something wants it (lineage runs its task).
        self.rebuild: Callable[[bytes], None] = _nothing

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
        refs = self._refs
        for n in nested:
            refs[n] += 1
        if data.shm_path:
            try:
                self._store.seal(oid, data.size)
            except Exception as e:  # noqa: BLE001 - whatever the store raises (ObjectStoreFullError
                # above all) becomes the object's value, which its readers then raise
                blob = self._encode_error(e)
                self.objects[oid] = Obj(blob, len(blob), nested, False)
            else:
                self.objects[oid] = Obj(None, data.size, nested, True)
                self._emit(ObjectLocation(oid, data.size, False, self.owners.get(oid, b"")))
        else:
            self.objects[oid] = Obj(data.inline, len(data.inline), nested, False)
        return True

    def mark_mapped(self, oids: Iterable[bytes]) -> None:
        """A client mapped these objects from the store: their files are never reused."""
        self._store.mark_mapped([oid for oid in oids if (o := self.objects.get(oid)) and o.in_store])

    def fill(self, data: common_pb2.ObjectData, oid: bytes, pin: bool = False) -> bool:
        """Describe object ``oid`` in ``data``; True when it was pinned in the store."""
        obj = self.objects[oid]
        data.object_id = oid
        data.size = obj.size
        data.node_id = self._node_id
        if obj.inline is not None:
            data.inline = obj.inline
            return False
        data.shm_path = self._store.locate(oid)
        if pin:
            self._store.pin(oid)
        return pin

    def describe_inputs(self, spec: common_pb2.TaskSpec, args: Any, inputs: Any = None) -> None:
        """Describe ``spec``'s arguments for another node: each one's data (inline) or where
        it is (node and size) appended to ``args`` (a repeated ``ObjectData``), and, when
        ``inputs`` (a repeated ``InputLocation``) is given, its size and the nodes holding it.
        The refs inside the arguments are described after them (``args`` only)."""
        nested = [oid for oid in spec.nested_refs if self.known(oid)]
        for n, oid in enumerate([*spec.arg_refs, *nested]):
            data = args.add()
            loc = inputs.add(object_id=oid) if inputs is not None and n < len(spec.arg_refs) else None
            if oid in self.objects:
                self.fill(data, oid)
                data.shm_path = ""  # paths mean nothing on another node
                if loc is not None:
                    loc.size = data.size
                    loc.node_ids.append(self._node_id)
                    copy = self.remote_copy(oid)
                    if copy:  # another node keeps it too: a scheduler may prefer that one
                        loc.node_ids.append(copy)
            else:  # remote here too: say where it is
                r = self.remote(oid)
                data.object_id, data.size, data.node_id = oid, r.size, r.node_id
                if loc is not None:
                    loc.size = r.size
                    loc.node_ids.append(r.node_id)

    def lend(self, node_id: bytes, spec: common_pb2.TaskSpec) -> None:
        """``spec`` goes to run on node ``node_id``: the store objects it takes (arguments,
        refs inside them) are kept here for that node until it frees them (it may keep
        them after the task, e.g. an actor storing a ref it was passed). Once per object
        and node: the node frees each remote object once."""
        holds = self.remote_holds.get(node_id)
        objects = self.objects
        for oid in [*spec.arg_refs, *spec.nested_refs]:
            obj = objects.get(oid)
            if obj is not None and obj.inline is None and not (holds and holds.get(oid)):
                self.hold_for(node_id, oid)
                holds = self.remote_holds[node_id]

    def describe_nested(self, home_node_id: bytes, returns: list[common_pb2.ObjectData],
                        out: Any) -> None:
        """Describe the objects inside ``returns`` (refs to objects a task put, say) for the
        node ``home_node_id`` in ``out`` (a repeated ``ObjectData``): small ones with their
        bytes, the others kept here for that node, or where they are."""
        seen: set[bytes] = set()
        for data in returns:
            for oid in data.nested_refs:
                if oid in seen:
                    continue
                seen.add(oid)
                if oid in self.objects:
                    d = out.add()
                    self.fill(d, oid)
                    d.nested_refs.extend(self.objects[oid].nested)
                    if d.shm_path:
                        d.shm_path = ""
                        self.hold_for(home_node_id, oid)
                elif oid in self.remote_objects:
                    r = self.remote_objects[oid]
                    d = out.add(object_id=oid, size=r.size, node_id=r.node_id)
                    d.nested_refs.extend(r.nested)

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
        self._refs[oid] += 1

    def incref_many(self, oids: Iterable[bytes]) -> None:
        refs = self._refs
        for oid in oids:
            refs[oid] += 1

    def hold_inputs(self, spec: common_pb2.TaskSpec) -> None:
        """A task of ``spec`` holds its arguments and the objects nested in them."""
        refs = self._refs
        for oid in spec.arg_refs:
            refs[oid] += 1
        for oid in spec.nested_refs:
            refs[oid] += 1

    def release_inputs(self, spec: common_pb2.TaskSpec) -> None:
        """A task of ``spec`` is over: it holds its arguments no more."""
        decref = self.decref
        for oid in spec.arg_refs:
            decref(oid)
        for oid in spec.nested_refs:
            decref(oid)

    def held(self, oid: bytes) -> bool:
        """True when anything holds a reference to ``oid``."""
        return self._refs.get(oid, 0) > 0

    def decref(self, oid: bytes, n: int = 1) -> None:
        """Drop ``n`` references; at zero, free the object (and what it contains)."""
        refs = self._refs
        left = refs.get(oid, 0) - n
        if left > 0:
            refs[oid] = left
            return
        refs.pop(oid, None)
        if self.owners.pop(oid, None) is not None:
            self.pulled_by.pop(oid, None)
        for hook in self.on_free:
            hook(oid)
        self._discard(oid)

    def _discard(self, oid: bytes) -> None:
        """Free the copy of ``oid`` held here (and what it contains), or forget the one
        known on another node; either way, a node keeping it for us is told to drop it."""
        obj = self.objects.pop(oid, None)
        if obj is None:
            r = self.remote_objects.pop(oid, None)
            if r is not None and oid not in self.pulling:
                self._emit(FreeRemote(r.node_id, oid))
            return
        if obj.remote_copy:
            self._emit(FreeRemote(obj.remote_copy, oid))
        if obj.in_store:
            self._store.free(oid)
            self._emit(ObjectLocation(oid, obj.size, True))
        for nested in obj.nested:
            self.decref(nested)

    def pulled(self, oid: bytes, node_id: bytes) -> None:
        """Node ``node_id`` pulls a copy of ``oid`` (remembered for objects owned here)."""
        if oid in self.owners:
            self.pulled_by.setdefault(oid, set()).add(node_id)

    def owned_by(self, client_id: bytes) -> list[bytes]:
        """Objects owned by ``client_id`` that something still holds."""
        held = self.held
        return [oid for oid, owner in self.owners.items() if owner == client_id and held(oid)]

    def drop_copies(self, oid: bytes) -> None:
        """Free every copy of ``oid`` (here, and those kept or known on other nodes); its
        holders keep their references, to whatever is stored for it next."""
        self.owners.pop(oid, None)
        self.lost.pop(oid, None)
        self._discard(oid)

    def drop_if_unheld(self, oid: bytes) -> None:
        """Forget ``oid`` (stored or known on another node) when nothing holds it."""
        if self._refs.get(oid, 0) <= 0 and (oid in self.objects or oid in self.remote_objects):
            self._refs[oid] = 1
            self.decref(oid)

    def drop_unheld(self, data: common_pb2.ObjectData) -> bool:
        """True when nothing holds the object of ``data`` any more: it is not kept (its
        shared-memory copy is freed)."""
        if self._refs.get(data.object_id, 0) > 0:
            return False
        if data.shm_path:
            self._store.free(data.object_id)
        return True

    def unpin(self, oids: Iterable[bytes]) -> None:
        """Readers of these shared-memory objects are done with them."""
        unpin = self._store.unpin
        for oid in oids:
            unpin(oid)

    # ---- waiting -------------------------------------------------------------------

    def wake(self, oid: bytes) -> tuple[list[Task] | None, list[bytes] | None]:
        """``oid`` is here now: (the tasks that waited for it, of which those now have all
        their inputs; None when no task waited) and the clients that waited in ``get``."""
        waiters = self._dep_waiters.pop(oid, None)
        ready: list[Task] | None = None
        if waiters:
            ready = []
            for task in waiters:
                missing = task.missing
                missing.discard(oid)
                if not missing:
                    ready.append(task)
        return ready, self._get_waiters.pop(oid, None)

    def await_inputs(self, task: Task, want: bool, remote_ok: bool = False) -> None:
        """Note ``task``'s arguments that are not here yet; ``want``: pull remote ones;
        ``remote_ok``: one known to be on another node counts as here (it is passed on)."""
        objects = self.objects
        for oid in task.spec.arg_refs:
            if oid not in objects and not (remote_ok and oid in self.remote_objects):
                task.missing.add(oid)
                self._dep_waiters.setdefault(oid, []).append(task)
                if want:
                    self.want(oid)

    def forget_waiter(self, task: Task) -> None:
        """``task`` ended before its inputs arrived."""
        for oid in task.missing:
            waiters = self._dep_waiters.get(oid)
            if waiters is not None and task in waiters:
                waiters.remove(task)

    def wait_get(self, oid: bytes, client_id: bytes, once: bool = False) -> None:
        """Client ``client_id`` waits for ``oid`` (``once``: unless it waits already)."""
        waiters = self._get_waiters.setdefault(oid, [])
        if not once or client_id not in waiters:
            waiters.append(client_id)

    def waiting_for(self, oid: bytes) -> list[Task]:
        """The tasks waiting for ``oid`` as an input."""
        return list(self._dep_waiters.get(oid, ()))

    def awaited(self, oid: bytes) -> bool:
        """True when a client or a task waits for ``oid``."""
        return oid in self._get_waiters or oid in self._dep_waiters

    # ---- remote objects ------------------------------------------------------------

    def add_remote(self, oid: bytes, node_id: bytes, size: int, nested: list[bytes]) -> None:
        """``oid`` is on node ``node_id``; pulled here when needed."""
        self.remote_objects[oid] = RemoteObject(node_id, size, nested)

    def remote(self, oid: bytes) -> RemoteObject:
        return self.remote_objects[oid]

    def want(self, oid: bytes) -> None:
        """Make sure a remote object is on its way here."""
        r = self.remote_objects.get(oid)
        if r is None:
            if oid in self.lost:
                self.rebuild(oid)
            return
        if oid in self.pulling:
            return
        self.pulling.add(oid)
        self._emit(Pull(oid, r.node_id))

    def pull_done(self, oid: bytes) -> tuple[bool, bytes]:
        """A pull of ``oid`` ended with its bytes in the store: (still wanted, node it
        came from). When nothing holds it any more, it is freed here and there."""
        self.pulling.discard(oid)
        r = self.remote_objects.pop(oid, None)
        source = r.node_id if r is not None else b""
        if self._refs.get(oid, 0) <= 0:
            self._store.free(oid)
            if r is not None:
                self._emit(FreeRemote(r.node_id, oid))
            return False, source
        return True, source

    def set_remote_copy(self, oid: bytes, node_id: bytes) -> None:
        obj = self.objects.get(oid)
        if obj is not None and node_id:
            obj.remote_copy = node_id

    def forget_remote(self, oid: bytes) -> bytes:
        """The copy of ``oid`` on another node is gone (its pull, if any, is over): the node
        that held it (b"" when none was known)."""
        self.pulling.discard(oid)
        r = self.remote_objects.pop(oid, None)
        return r.node_id if r is not None else b""

    def remote_on(self, node_id: bytes) -> list[bytes]:
        """Remote objects known to be on node ``node_id``."""
        return [oid for oid, r in self.remote_objects.items() if r.node_id == node_id]

    # ---- copies kept for other nodes -----------------------------------------------

    def hold_for(self, node_id: bytes, oid: bytes) -> None:
        """Keep ``oid`` for node ``node_id`` until it releases it (or dies)."""
        self._refs[oid] += 1
        holds = self.remote_holds.get(node_id)
        if holds is None:
            holds = self.remote_holds[node_id] = Counter()
        holds[oid] += 1

    def release_remote_holds(self, ids: list[bytes], node_id: bytes | None = None) -> None:
        """Node ``node_id`` no longer needs objects we keep for it (None: any node, for
        senders that do not say who they are)."""
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
