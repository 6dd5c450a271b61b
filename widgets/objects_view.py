"""The Object store section's pure view: bytes in each node's store, and the largest objects.

``object_store_view`` takes the rows of the ``objects`` and ``nodes`` tables (as
``runtime.state`` gives them) and returns an immutable ``ObjectStoreView``. No ipywidgets,
no clock.

What it shows, and where each number comes from:

- Per node: the store's bytes in use and its capacity (``NodeState.store_used`` /
  ``store_capacity``), the bytes spilled to disk now and so far (``store_spilled`` /
  ``store_spilled_total``), all from the node's latest heartbeat; and the copies of objects
  the ``objects`` table places on the node, with their bytes.
- The largest objects: size, which node(s) hold a copy, who owns it (the client id the GCS
  recorded; "this kernel" when it is this driver; "unknown" when none was recorded), and
  what created it: ``rt.put`` (an object id ending in index 0) or the return value of a
  task (index 1, 2, ...; named after the task's function when the tasks table still has
  the task).

``ObjectState.spilled`` is not used: spilled bytes are counted per node from the
heartbeat.

Examples
--------
>>> from runtime.state import ObjectState
>>> obj = ObjectState("ab" * 16 + "00000000", 5_000_000, ("n1" * 16,), False)
>>> v = object_store_view([obj], [])
>>> v.largest[0].size, v.largest[0].created_by, v.largest[0].holders
(5000000, 'rt.put', ('n1n1n1',))
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from runtime.state import NodeState, ObjectState, format_bytes

__all__ = ["NodeStoreView", "ObjectRowView", "ObjectStoreView", "created_by", "object_store_view"]

#: An object id is its task's id (16 bytes) and a 4-byte little-endian index (0: a put).
_TASK_BYTES, _OBJECT_BYTES = 16, 20


@dataclass(frozen=True)
class NodeStoreView:
    """One node's store."""

    node_id: str
    label: str
    alive: bool
    #: Bytes in the shared-memory store now, and its size.
    used: int
    capacity: int
    #: Bytes spilled to disk now, and spilled since the node started.
    spilled: int
    spilled_total: int
    #: Objects of the ``objects`` table with a copy here, and their bytes.
    copies: int
    copy_bytes: int


@dataclass(frozen=True)
class ObjectRowView:
    """One row of the largest-objects table."""

    object_id: str
    size: int
    #: "this kernel", the owner's short id, or "unknown".
    owner: str
    #: "rt.put", "f() return 1", or "task 3f2a9c return 1" when the task is gone.
    created_by: str
    #: Labels of the nodes holding a copy.
    holders: tuple[str, ...]


@dataclass(frozen=True)
class ObjectStoreView:
    """The Object store section: every node's store, the largest objects (largest first),
    and totals over the whole ``objects`` table."""

    nodes: tuple[NodeStoreView, ...]
    largest: tuple[ObjectRowView, ...]
    #: Objects in the table and the sum of their sizes (one copy each).
    count: int
    total_bytes: int

    @classmethod
    def empty(cls) -> ObjectStoreView:
        return cls(nodes=(), largest=(), count=0, total_bytes=0)

    def summary(self) -> str:
        """One line for the text fallback."""
        spilled = sum(n.spilled for n in self.nodes)
        line = f"Object store: {self.count} objects, {format_bytes(self.total_bytes)}"
        if spilled:
            line += f"; {format_bytes(spilled)} spilled to disk"
        if self.largest:
            top = self.largest[0]
            line += f"; largest {format_bytes(top.size)} ({top.created_by})"
        return line


def created_by(object_id: str, task_name: Callable[[str], str | None] = lambda t: None) -> str:
    """What made an object, from its id: "rt.put", or "f() return 1" (the function named by
    ``task_name(task_id)``, else "task <short id> return 1").

    >>> created_by("ab" * 16 + "02000000", {"ab" * 16: "f"}.get)
    'f() return 2'
    """
    try:
        raw = bytes.fromhex(object_id)
    except ValueError:
        return "unknown"
    if len(raw) != _OBJECT_BYTES:
        return "unknown"
    task_id, index = object_id[:2 * _TASK_BYTES], int.from_bytes(raw[_TASK_BYTES:], "little")
    if index == 0:
        return "rt.put"
    name = task_name(task_id)
    return f"{name}() return {index}" if name else f"task {task_id[:6]} return {index}"


def _label(node_id: str | None) -> str:
    return node_id[:6] if node_id else "-"


def object_store_view(objects: Collection[ObjectState], nodes: Sequence[NodeState], *,
                      label: Callable[[str | None], str] = _label,
                      task_name: Callable[[str], str | None] = lambda t: None,
                      own_id: str | None = None, limit: int = 10) -> ObjectStoreView:
    """The section's view of ``objects`` and ``nodes`` (in the order to show them).

    ``label`` names a node as the other sections do, ``task_name`` gives the function of a
    task id still known, ``own_id`` is this driver's client id (its objects are owned by
    "this kernel"), ``limit`` is the number of largest objects listed.
    """
    copies: dict[str, list[int]] = {}
    total = 0
    for obj in objects:
        total += obj.size
        for node_id in obj.locations:
            cell = copies.setdefault(node_id, [0, 0])
            cell[0] += 1
            cell[1] += obj.size
    node_views = tuple(NodeStoreView(
        node_id=n.node_id, label=label(n.node_id), alive=n.alive, used=n.store_used,
        capacity=n.store_capacity, spilled=n.store_spilled, spilled_total=n.store_spilled_total,
        copies=copies.get(n.node_id, [0, 0])[0], copy_bytes=copies.get(n.node_id, [0, 0])[1])
        for n in nodes)

    def owner(owner_id: str | None) -> str:
        if not owner_id:
            return "unknown"
        return "this kernel" if owner_id == own_id else owner_id[:8]

    top = heapq.nlargest(limit, objects, key=lambda o: (o.size, o.object_id))
    rows = tuple(ObjectRowView(object_id=o.object_id, size=o.size, owner=owner(o.owner_id),
                               created_by=created_by(o.object_id, task_name),
                               holders=tuple(label(n) for n in o.locations)) for o in top)
    return ObjectStoreView(nodes=node_views, largest=rows, count=len(objects), total_bytes=total)
