"""Placement-group bundles reserved on this node. Pure, a part of the local scheduler.

The GCS reserves a group's bundles in two phases (``runtime.gcs.reservations``):

``prepare``
    Set the bundles' resources aside (taken from what is available, GPU indices included),
    all of them or none: the answer says why not when they do not fit now.
``commit``
    The bundles become usable: the node gains their own resources, named as in
    ``runtime.protocol.bundles`` (``CPU_group_0_<pg>``, ``CPU_group_<pg>``,
    ``bundle_group_…``), so the tasks of the group, which ask for those names, fit here and
    nowhere else; heartbeats carry them to the global schedulers. A task asking for a
    bundle's GPUs gets the GPU indices the bundle set aside (``CUDA_VISIBLE_DEVICES``).
``release``
    A prepared bundle gives its resources back; a committed one also loses its own
    resources, and whatever still runs on them stops, as in Ray: an actor dies (no
    restart), a task is cancelled (its worker is killed).

Every call is idempotent, so the GCS may repeat one after a lost answer: a bundle prepared
twice is set aside once, a commit of a committed bundle and a release of an unknown one do
nothing.

A bundle whose group the GCS does not know, or knows as removed or placed elsewhere (the GCS
died between prepare and commit, or a caller reserved bundles for no group), would hold its
resources forever: the node manager asks the GCS about bundles held longer than
``bundle_check_ms`` (``find_orphans``) and releases the orphans (``orphans``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from runtime import _ids
from runtime.node.actors import ActorTable
from runtime.node.resources import Resources
from runtime.node.workers import WorkerTable
from runtime.protocol import common_pb2, gcs_pb2
from runtime.protocol.bundles import reserved_resources
from runtime.protocol.checks import resources_problem
from runtime.protocol.resources import describe
from runtime.protocol.states import PlacementGroupState

__all__ = ["BundleHost", "BundleTable", "check_bundles", "holders", "waits_for_group"]

logger = logging.getLogger(__name__)

#: (placement group id, bundle index)
Key = tuple[bytes, int]


@dataclass(slots=True)
class Reserved:
    """One bundle held here."""

    #: What it sets aside from the node's own resources (as the user asked).
    resources: dict[str, float]
    #: GPU indices it set aside.
    gpu_ids: list[int] = field(default_factory=list)
    #: Committed: its own resources are part of the node's.
    committed: bool = False
    #: When it was prepared or last found placed here by the GCS (``time.monotonic()``).
    checked: float = 0.0


class BundleHost(Protocol):
    """What the bundles ask of the local scheduler."""

    def schedule(self) -> None:
        """Start what can start now (tasks waiting for a bundle's resources)."""
        ...

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        """Cancel a task (``force``: kill its worker)."""
        ...


def check_bundles(bundles: Iterable[common_pb2.Bundle]) -> str:
    """Why a request's bundles are malformed, or "" when they are fine."""
    for i, b in enumerate(bundles):
        if not b.placement_group_id or b.index < 0:
            return f"bundles[{i}] needs a placement_group_id and an index >= 0"
        if why := resources_problem(f"bundles[{i}].resources", b.resources):
            return why
    return ""


def waits_for_group(spec: common_pb2.TaskSpec) -> str:
    """For a task of a placement group that no node can hold yet: what it waits for ("" for
    any other task)."""
    group = spec.strategy.placement_group_id
    if not group:
        return ""
    index = spec.strategy.bundle_index
    which = f"bundle {index}" if index >= 0 else "a bundle"
    return (f"Task {spec.name}() waits for a node holding {which} of placement group {group.hex()} "
            "(the group is not created yet, or was removed; see runtime.util.placement_group_table())")


def _gpu_names(names: Iterable[str]) -> list[str]:
    return [k for k in names if k.startswith("GPU_group_")]


def _key(b: common_pb2.Bundle) -> Key:
    return b.placement_group_id, b.index


def _label(keys: Iterable[Key]) -> str:
    return ", ".join(f"{i} of group {_ids.short(pg)}" for pg, i in keys)


class BundleTable:
    """The bundles this node holds (see the module docstring)."""

    __slots__ = ("_actors", "_host", "_resources", "_workers", "reserved")

    def __init__(self, resources: Resources, workers: WorkerTable, actors: ActorTable,
                 host: BundleHost) -> None:
        self._resources = resources
        self._workers = workers
        self._actors = actors
        self._host = host
        #: Every bundle prepared or committed here.
        self.reserved: dict[Key, Reserved] = {}

    def __len__(self) -> int:
        return len(self.reserved)

    def prepare(self, bundles: Iterable[common_pb2.Bundle]) -> str:
        """Set the bundles' resources aside, all or none; "" when done, else why not."""
        new: dict[Key, dict[str, float]] = {}
        for b in bundles:
            key = _key(b)
            if key not in self.reserved:
                new[key] = {k: float(v) for k, v in b.resources.items() if v > 0}
        need: dict[str, float] = {}
        for res in new.values():
            for k, v in res.items():
                need[k] = need.get(k, 0.0) + v
        resources = self._resources
        if not resources.can_run(need):
            free = {k: max(resources.available.get(k, 0.0), 0.0) for k in need}
            return (f"bundle(s) {_label(new)} need {describe(need)} but this node has "
                    f"{describe(free)} free now")
        for key, res in new.items():
            self.reserved[key] = Reserved(res, resources.acquire(res), checked=time.monotonic())
        return ""

    def commit(self, bundles: Iterable[common_pb2.Bundle]) -> str:
        """Make prepared bundles usable and start the tasks that waited for them; "" when
        done, else why not (nothing changes then)."""
        keys = [_key(b) for b in bundles]
        missing = [k for k in keys if k not in self.reserved]
        if missing:
            return (f"bundle(s) {_label(missing)} were not prepared here (released since, or the "
                    "node restarted)")
        for pg, index in keys:
            r = self.reserved[(pg, index)]
            if not r.committed:
                r.committed = True
                names = reserved_resources(r.resources, pg, index)
                self._resources.grow(names)
                if r.gpu_ids:  # tasks asking for the bundle's GPUs get these indices
                    self._resources.bundle_gpus_changed(_gpu_names(names), r.gpu_ids, added=True)
        self._host.schedule()
        return ""

    def release(self, bundles: Iterable[common_pb2.Bundle]) -> None:
        """Give the bundles' resources back; what runs on a committed one stops."""
        over: set[str] = set()
        resources = self._resources
        for b in bundles:
            r = self.reserved.pop(_key(b), None)
            if r is None:
                continue
            if r.committed:
                names = reserved_resources(r.resources, b.placement_group_id, b.index)
                over.update(resources.shrink(names))
                if r.gpu_ids:
                    resources.bundle_gpus_changed(_gpu_names(names), r.gpu_ids, added=False)
            resources.release(r.resources, r.gpu_ids, 0.0)
        for worker_id, task_ids in holders(self._workers, over).items():
            actor = next((a for a in self._actors.actors.values() if a.worker_id == worker_id), None)
            if actor is not None:
                self._actors.kill(actor.actor_id, True, "its placement group bundle was released")
                continue
            for task_id in task_ids:
                self._host.cancel(task_id, True, False)
        self._host.schedule()

    def unchecked_since(self, before: float) -> set[bytes]:
        """The groups of the bundles not checked since ``before`` (monotonic)."""
        return {pg for (pg, _), r in self.reserved.items() if r.checked < before}

    def orphans(self, groups: dict[bytes, gcs_pb2.PlacementGroupRow | None],
                node_id: bytes, before: float) -> list[common_pb2.Bundle]:
        """The bundles of ``groups`` (the GCS's rows; None: no such group), not checked since
        ``before``, that no group places here: the group is unknown or removed, or its bundle
        is on another node (or has no such index). The others count as checked now."""
        out: list[common_pb2.Bundle] = []
        now = time.monotonic()
        for (pg, index), held in list(self.reserved.items()):
            if pg not in groups or held.checked >= before:
                continue
            row = groups[pg]
            if row is not None and row.state != PlacementGroupState.REMOVED:
                placed = next((b.node_id for b in row.bundles if b.index == index), None)
                if placed is not None and placed in (b"", node_id):
                    held.checked = now
                    continue
            out.append(common_pb2.Bundle(placement_group_id=pg, index=index))
        return out

    async def find_orphans(self, group_of: Callable[[bytes], Awaitable[gcs_pb2.PlacementGroupRow | None]],
                           node_id: bytes, older_than_s: float) -> list[common_pb2.Bundle]:
        """Ask ``group_of`` (the GCS) about the groups of bundles held longer than
        ``older_than_s``; the orphans among them (see ``orphans``)."""
        before = time.monotonic() - older_than_s
        rows = {pg: await group_of(pg) for pg in self.unchecked_since(before)}
        orphans = self.orphans(rows, node_id, before) if rows else []
        if orphans:
            logger.warning("releasing %d bundle(s) that no placement group places on this node: %s",
                           len(orphans), ", ".join(f"{_ids.short(b.placement_group_id)}[{b.index}]"
                                                   for b in orphans))
        return orphans

    def statistics(self) -> dict[str, int]:
        """How many bundles are prepared and committed here."""
        committed = sum(r.committed for r in self.reserved.values())
        return {"bundles_prepared": len(self.reserved) - committed, "bundles_committed": committed}


def holders(workers: WorkerTable, names: Iterable[str]) -> dict[bytes, list[bytes]]:
    """Workers running (or sent) tasks that hold any of the resource ``names``: worker id ->
    those task ids (an actor's process holds its creation's resources in its first frame)."""
    wanted = set(names)
    out: dict[bytes, list[bytes]] = {}
    for w in workers.workers.values():
        for frame in (*w.frames, *w.queued):
            if wanted.intersection(frame.resources):
                out.setdefault(w.worker_id, []).append(frame.task_id)
    return out
