"""Lineage: making an object again when every copy of it is lost. Pure, a part of the local
scheduler.

A task's *home* (the node its owner submitted it to) keeps the task's spec after it
finished for as long as anything may need it again: one of its returns is still held, or a
kept task takes one of its returns as an input (so a chain rebuilds from its first lost
link, even when the links in between were freed). Nothing else is kept: the lineage of
objects nobody holds is dropped with them.

When every copy of a return is lost (the node holding it died, or pulling it failed), the
object is marked *lost*. The first reader (a ``get``, or a task taking it as an input)
re-runs its task, within the task's ``max_retries``; the re-run's own inputs that are gone
are rebuilt the same way, recursively. Each re-run is a ``RETRYING`` event, with the
object it rebuilds as its detail. An object that cannot be rebuilt (made by ``put``, by an
actor method, by a task out of retries or whose spec was dropped) becomes an
``ObjectLostError`` naming it, where it was made and why; tasks taking it fail with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime import _ids
from runtime.exceptions import ObjectLostError
from runtime.node.objects import ErrorEncoder, ObjectTable
from runtime.node.tasks import Phase, Task, TaskHost
from runtime.protocol import common_pb2
from runtime.protocol.states import TaskState

_PUT_INDEX = (0).to_bytes(4, "little")


@dataclass(slots=True)
class _Entry:
    spec: common_pb2.TaskSpec
    #: Its returns still held by someone.
    live: set[bytes]
    #: Kept tasks that take one of its returns as an input.
    users: int
    #: Kept tasks whose returns it takes (each one counts it once as a user).
    inputs: list[bytes]


class Lineage:
    """Specs of finished tasks that may have to run again (see the module docstring)."""

    __slots__ = ("_encode_error", "_entries", "_host", "_node_id", "_objects")

    def __init__(self, node_id: bytes, host: TaskHost, objects: ObjectTable,
                 encode_error: ErrorEncoder) -> None:
        self._node_id = node_id
        self._host = host
        self._objects = objects
        self._encode_error = encode_error
        self._entries: dict[bytes, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    # ---- keeping and dropping ------------------------------------------------------

    def keep(self, spec: common_pb2.TaskSpec) -> None:
        """Task ``spec``, submitted here, finished: keep it while its returns are held."""
        held = self._objects.held
        live = {oid for oid in (_ids.object_id(spec.task_id, i) for i in range(1, spec.num_returns + 1))
                if held(oid)}
        if not live:
            return
        entries = self._entries
        entry = entries.get(spec.task_id)
        if entry is not None:  # it ran again (a rebuild)
            entry.live |= live
            return
        inputs: list[bytes] = []
        for oid in spec.arg_refs:
            parent = entries.get(_ids.task_of(oid))
            if parent is not None and _ids.task_of(oid) not in inputs:
                parent.users += 1
                inputs.append(_ids.task_of(oid))
        entries[spec.task_id] = _Entry(spec, live, 0, inputs)

    def freed(self, oid: bytes) -> None:
        """Nothing holds ``oid`` any more: its task is kept only while a kept task needs it."""
        self._objects.lost.pop(oid, None)
        task_id = _ids.task_of(oid)
        entry = self._entries.get(task_id)
        if entry is None:
            return
        entry.live.discard(oid)
        self._release(task_id, entry)

    def _release(self, task_id: bytes, entry: _Entry) -> None:
        entries = self._entries
        stack = [(task_id, entry)]
        while stack:
            tid, e = stack.pop()
            if e.live or e.users > 0 or entries.get(tid) is not e:
                continue
            del entries[tid]
            for parent_id in e.inputs:
                parent = entries.get(parent_id)
                if parent is not None:
                    parent.users -= 1
                    stack.append((parent_id, parent))

    # ---- losing and rebuilding -----------------------------------------------------

    def lost(self, oid: bytes, why: str, where: bytes = b"") -> None:
        """Every copy of ``oid`` is gone (``why``; ``where``: the node that held it). A held
        object is rebuilt when read (at once when something waits for it), or, when it
        cannot be, becomes its ``ObjectLostError``."""
        objects = self._objects
        where = objects.forget_remote(oid) or where
        if not objects.held(oid) or oid in objects:
            return
        if self._cannot_rebuild(oid) is None:
            objects.lost[oid] = why
            if objects.awaited(oid):
                self.rebuild(oid)
            return
        self._give_up(oid, why, where)

    def rebuild(self, oid: bytes) -> None:
        """Run the task of lost object ``oid`` again (unless it runs already), and those of
        its inputs that are gone too (a worklist: chains of any length)."""
        objects, host = self._objects, self._host
        todo = [oid]
        while todo:
            lost = todo.pop()
            why = objects.lost.pop(lost, "")
            task_id = _ids.task_of(lost)
            if host.task(task_id) is not None:
                continue  # already running again: its results wake the readers
            if self._cannot_rebuild(lost) is not None:
                self._give_up(lost, why)
                continue
            spec = self._entries[task_id].spec
            spec.attempt += 1
            task = host.add_task(spec)
            objects.hold_inputs(spec)
            host.event(task, TaskState.RETRYING,
                       detail=f"run again to rebuild lost object {_ids.short(lost)} ({why})")
            for arg in spec.arg_refs:
                if objects.known(arg):
                    continue
                if arg not in objects.lost:  # freed after its use here
                    objects.lost[arg] = f"freed after use, needed to rebuild {_ids.short(lost)}"
                todo.append(arg)
            objects.await_inputs(task, want=False, remote_ok=True)
            if not task.missing:
                host.make_ready(task)
        host.schedule()

    def inputs_lost(self, task: Task, lost: list[bytes], node_id: bytes) -> None:
        """Our ``task`` went back to waiting here: node ``node_id`` could not get its inputs
        ``lost``. Those known only on another node are lost (and rebuilt when read); the task
        runs again, within its ``max_retries``."""
        objects, host = self._objects, self._host
        why = f"node {_ids.short(node_id)} could not get it"
        for oid in lost:
            if oid not in objects and objects.known(oid):
                self.lost(oid, why)
        spec = task.spec
        if task.cancelled or 0 <= spec.max_retries <= spec.attempt:
            err = ObjectLostError(
                f"{spec.name}() (task {_ids.short(spec.task_id)}) could not run: its inputs "
                f"{', '.join(_ids.short(o) for o in lost)} were lost on node {_ids.short(node_id)}, "
                f"and max_retries={spec.max_retries} is spent.", object_id=lost[0].hex() if lost else "")
            host.fail(task, err)
            return
        spec.attempt += 1
        host.event(task, TaskState.RETRYING, detail=f"its inputs were lost on node {_ids.short(node_id)}")
        task.phase = Phase.WAITING
        objects.await_inputs(task, want=True, remote_ok=True)
        if not task.missing:
            host.make_ready(task)
        host.schedule()

    def _cannot_rebuild(self, oid: bytes) -> str | None:
        """Why ``oid`` cannot be made again, or None when it can."""
        if oid[_ids.TASK_ID_LEN:] == _PUT_INDEX:
            return "objects made by put() have no task to run again"
        entry = self._entries.get(_ids.task_of(oid))
        if entry is None:
            return ("it was not made by a task submitted through this node, or its task's "
                    "record was dropped")
        spec = entry.spec
        if spec.actor_id:
            return f"it was returned by the actor method {spec.name}(), which is not run again"
        if 0 <= spec.max_retries <= spec.attempt:
            return (f"{spec.name}() already ran {spec.attempt + 1} time(s) and "
                    f"max_retries={spec.max_retries} is spent")
        return None

    def _give_up(self, oid: bytes, why: str, where: bytes = b"") -> None:
        entry = self._entries.get(_ids.task_of(oid))
        if oid[_ids.TASK_ID_LEN:] == _PUT_INDEX:
            made = "made by put()"
        elif entry is not None:
            made = f"a return of {entry.spec.name}(), task {_ids.short(entry.spec.task_id)}"
        else:
            made = "a task's return"
        held = f" on node {_ids.short(where)}" if where else ""
        err = ObjectLostError(
            f"Object {oid.hex()} ({made}, held{held}) is lost: {why or 'every copy is gone'}. "
            f"It cannot be rebuilt: {self._cannot_rebuild(oid)}.", object_id=oid.hex())
        blob = self._encode_error(err)
        self._host.store_object(common_pb2.ObjectData(object_id=oid, inline=blob, size=len(blob)))
