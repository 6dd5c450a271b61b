"""Placement groups in the GCS: reserving their bundles on nodes, two-phase, all or nothing.

``PlacementManager`` keeps the ``placement_groups`` table (``GcsState``) and does the I/O
the planner (``placement.py``) cannot: for a group not placed yet it asks ``plan`` for a
node per bundle, then

1. *prepares* the bundles on every chosen node (``PrepareBundles``: each node sets their
   resources aside, all or none); if one node refuses or cannot be reached, the nodes
   that did prepare release theirs and the group waits for the next try;
2. *commits* them everywhere (``CommitBundles``: the node adds the bundles' own resources,
   ``CPU_group_0_<pg>`` ..., so the group's tasks fit there); a failed commit releases
   every bundle of the attempt.

A group then goes PENDING → CREATED. While it cannot be placed its row says why
(``why``, and ``infeasible`` when no set of live nodes could ever hold it); other groups
are tried regardless, so one that waits blocks nothing. Every change of the ``nodes``
table (a node joins, a heartbeat with resources freed, a death) wakes the manager to try
again. When a node holding bundles dies, its bundles are placed again (RESCHEDULING →
CREATED) while the group's other bundles stay. ``remove`` releases the bundles on their
nodes (which kill what still runs in them) and leaves the row REMOVED; a job's groups
that are not detached are removed when the job finishes. The rows live in the GCS's
storage, so a durable GCS resumes with its groups (PENDING ones are tried again).

Attempts and removals of one group never interleave (one lock). A group whose reservation
failed (a node refused or did not answer) is tried again after a delay that doubles with
each failure in a row (up to ``_MAX_BACKOFF_S``). The nodes' resources are
read from their heartbeats; a bundle committed since a node's last heartbeat is taken
off that node's available resources, so two groups placed back to back do not count on
the same room.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

import grpc

from runtime._ids import short
from runtime.config import Settings
from runtime.gcs.placement import NodeRoom, Placed, plan
from runtime.gcs.state import GcsState
from runtime.protocol import bundles as bundle_names
from runtime.protocol import common_pb2, gcs_pb2, node_pb2
from runtime.protocol.states import PlacementGroupState
from runtime.rpc.channel import NodeClients, token_metadata

logger = logging.getLogger(__name__)

__all__ = ["BundleNodes", "GrpcBundleNodes", "PlacementManager"]

_REMOVED, _CREATED = PlacementGroupState.REMOVED, PlacementGroupState.CREATED
#: Longest wait before a group whose reservations keep failing is tried again.
_MAX_BACKOFF_S = 5.0
_Bundles = Sequence[common_pb2.Bundle]


class BundleNodes(Protocol):
    """The three bundle calls of node managers; each returns "" when done, else why not."""

    async def prepare(self, address: str, bundles: _Bundles) -> str: ...
    async def commit(self, address: str, bundles: _Bundles) -> str: ...
    async def release(self, address: str, bundles: _Bundles) -> str: ...
    async def close(self) -> None: ...


class GrpcBundleNodes:
    """``BundleNodes`` over gRPC: one channel per node address, the cluster token on each call."""

    def __init__(self, token: str, timeout: float = Settings.rpc_timeout_s) -> None:
        self._md = token_metadata(token)
        self._timeout = timeout
        self._nodes = NodeClients()

    async def _call(self, verb: str, address: str, bundles: _Bundles) -> str:
        request = node_pb2.BundlesRequest(bundles=bundles)
        try:
            reply: node_pb2.BundlesReply = await getattr(self._nodes.get(address), verb)(
                request, metadata=self._md, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            return f"the node at {address} did not answer {verb} ({err.code().name}: {err.details()})"
        return "" if reply.ok else (reply.why_not or f"the node at {address} refused {verb}")

    async def prepare(self, address: str, bundles: _Bundles) -> str:
        return await self._call("PrepareBundles", address, bundles)

    async def commit(self, address: str, bundles: _Bundles) -> str:
        return await self._call("CommitBundles", address, bundles)

    async def release(self, address: str, bundles: _Bundles) -> str:
        return await self._call("ReleaseBundles", address, bundles)

    async def close(self) -> None:
        await self._nodes.close()


class PlacementManager:
    """Places, reschedules and removes placement groups (see the module docstring).

    ``commit`` publishes what the state recorded (``GcsService.commit``); ``retry_s`` bounds
    how long a waiting group goes without a try when no node changes.
    """

    def __init__(self, state: GcsState, nodes: BundleNodes, commit: Callable[[], None], *,
                 retry_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._nodes = nodes
        self._publish = commit
        self._retry_s = retry_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        #: Groups whose last reservation failed: (failures in a row, loop time of the next try).
        self._backoff: dict[bytes, tuple[int, float]] = {}

    # ---- life ----------------------------------------------------------------------

    def start(self) -> None:
        """Start placing (groups PENDING in a durable GCS included) on the running loop."""
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="gcs-placement")
        self._wake.set()

    async def close(self) -> None:
        tasks = [t for t in (self._loop_task, *self._background) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        await self._nodes.close()

    def nodes_changed(self) -> None:
        """The nodes table changed: waiting groups get another try."""
        self._wake.set()

    # ---- the calls of the PlacementGroups service ----------------------------------

    def create(self, row: gcs_pb2.PlacementGroupRow) -> bytes:
        """Record a new group (``InvalidRequestError`` for a bad one) and start placing it."""
        group = self._state.create_placement_group(row)
        self._written()
        self._wake.set()
        return group.placement_group_id

    async def remove(self, pg_id: bytes) -> bool:
        """Release the group's bundles on their nodes and mark it REMOVED; False when unknown."""
        async with self._lock:
            row = self._state.get_placement_group(pg_id)
            if row is None:
                return False
            if row.state == _REMOVED:
                return True
            placed = [common_pb2.Bundle(placement_group_id=b.placement_group_id, index=b.index,
                                        resources=b.resources, node_id=b.node_id)
                      for b in row.bundles if b.node_id]
            row.state, row.why, row.infeasible = _REMOVED, "", False
            self._backoff.pop(pg_id, None)
            for b in row.bundles:
                b.node_id = b""
            self._put(row)
            await self._release(placed)
        logger.info("placement group %s removed", short(pg_id))
        return True

    def job_finished(self, job_id: bytes) -> None:
        """Remove the groups of a finished job, except the detached ones."""
        for row in self._state.placement_groups():
            if row.job_id == job_id and not row.detached and row.state != _REMOVED:
                self._spawn(self.remove(row.placement_group_id))

    async def wait(self, pg_id: bytes, timeout: float) -> tuple[bool, gcs_pb2.PlacementGroupRow | None]:
        """``(created, row)`` once the group is CREATED or REMOVED, or when ``timeout`` passes."""
        deadline = asyncio.get_running_loop().time() + max(timeout, 0.0)
        while True:
            changed = self._changed  # taken before reading, so no change is missed
            row = self._state.get_placement_group(pg_id)
            if row is None or row.state in (_CREATED, _REMOVED):
                return row is not None and row.state == _CREATED, row
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False, row
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass

    # ---- placing -------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._retry_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.place_waiting()
            except Exception:  # keep placing: one bad row must not stop every group
                logger.exception("placing placement groups failed")

    async def place_waiting(self) -> None:
        """One pass: every group not fully placed (or with bundles on a dead node) is tried."""
        loop = asyncio.get_running_loop()
        alive = self._alive()  # read again after each attempt (nodes change meanwhile)
        for pg_id in [g.placement_group_id for g in self._state.placement_groups() if g.state != _REMOVED]:
            if self._backoff.get(pg_id, (0, 0.0))[1] > loop.time():
                continue  # its last reservation failed: not again so soon
            async with self._lock:
                row = self._state.get_placement_group(pg_id)
                if row is None or row.state == _REMOVED:
                    continue
                self._forget_dead(row, alive)
                if any(not b.node_id for b in row.bundles):
                    await self._attempt(row, alive)
                    alive = self._alive()

    def _alive(self) -> dict[bytes, gcs_pb2.NodeRow]:
        rows = (gcs_pb2.NodeRow.FromString(v) for _, v in self._state.items("nodes"))
        return {n.node_id: n for n in rows if n.alive}

    def _forget_dead(self, row: gcs_pb2.PlacementGroupRow, alive: dict[bytes, gcs_pb2.NodeRow]) -> None:
        lost = [b for b in row.bundles if b.node_id and b.node_id not in alive]
        if not lost:
            return
        dead = sorted({short(b.node_id) for b in lost})
        row.why = (f"node {', '.join(dead)} holding bundle(s) {', '.join(str(b.index) for b in lost)} "
                   "died; placing them again")
        for b in lost:  # nothing to release there: a dead node is fenced and drops its bundles
            b.node_id = b""
        row.state = PlacementGroupState.RESCHEDULING
        self._put(row)
        logger.warning("placement group %s: %s", short(row.placement_group_id), row.why)

    def _rooms(self, alive: dict[bytes, gcs_pb2.NodeRow]) -> list[NodeRoom]:
        """Each live node's resources; bundles committed since its last heartbeat taken off."""
        available = {n: dict(r.load.available) for n, r in alive.items()}
        for group in self._state.placement_groups():
            if group.state == _REMOVED:
                continue
            for b in group.bundles:
                node = alive.get(b.node_id)
                if node is None:
                    continue
                marker = bundle_names.task_resources({}, b.placement_group_id, b.index)
                if not any(k in node.load.total for k in marker):  # not in its heartbeat yet
                    room = available[b.node_id]
                    for k, v in b.resources.items():
                        room[k] = room.get(k, 0.0) - v
        return [NodeRoom(n, dict(r.load.total), available[n]) for n, r in alive.items()]

    async def _attempt(self, row: gcs_pb2.PlacementGroupRow, alive: dict[bytes, gcs_pb2.NodeRow]) -> None:
        todo = {b.index: dict(b.resources) for b in row.bundles if not b.node_id}
        fixed = {b.index: b.node_id for b in row.bundles if b.node_id}
        decision = plan(row.strategy, todo, self._rooms(alive), fixed)
        if not isinstance(decision, Placed):
            why = decision.why
            if row.state == PlacementGroupState.RESCHEDULING and fixed:
                why = f"placing lost bundle(s) again: {why}"
            if (why, decision.infeasible) != (row.why, row.infeasible):
                row.why, row.infeasible = why, decision.infeasible
                self._put(row)
            return
        row.attempts += 1
        chosen = [b for b in row.bundles if b.index in decision.nodes]
        for b in chosen:
            b.node_id = decision.nodes[b.index]
        by_node: dict[bytes, list[common_pb2.Bundle]] = {}
        for b in chosen:
            by_node.setdefault(b.node_id, []).append(b)
        why = await self._two_phase({alive[n].address: bs for n, bs in by_node.items()})
        pg_id = row.placement_group_id
        if why:
            for b in chosen:
                b.node_id = b""
            fails = self._backoff.get(pg_id, (0, 0.0))[0] + 1
            delay = min(self._retry_s * 2 ** (fails - 1), _MAX_BACKOFF_S)
            self._backoff[pg_id] = (fails, asyncio.get_running_loop().time() + delay)
            row.why, row.infeasible = f"attempt {row.attempts} failed, trying again: {why}", False
            self._put(row)
            return
        self._backoff.pop(pg_id, None)
        row.state, row.why, row.infeasible, row.ready_time = _CREATED, "", False, self._clock()
        self._put(row)
        logger.info("placement group %s created (%s): %s", short(row.placement_group_id), row.strategy,
                    ", ".join(f"{b.index}→{short(b.node_id)}" for b in row.bundles))

    async def _two_phase(self, plan_: dict[str, list[common_pb2.Bundle]]) -> str:
        """Prepare on every node, then commit on every node; "" when done, else why not (and
        everything the attempt reserved is released)."""
        addresses = list(plan_)
        answers = await asyncio.gather(*(self._nodes.prepare(a, plan_[a]) for a in addresses))
        refused = [(a, why) for a, why in zip(addresses, answers, strict=True) if why]
        if refused:
            done = {a for a, why in zip(addresses, answers, strict=True) if not why}
            await self._release_at({a: plan_[a] for a in done})
            return "; ".join(f"{a}: {why}" for a, why in refused)
        answers = await asyncio.gather(*(self._nodes.commit(a, plan_[a]) for a in addresses))
        refused = [(a, why) for a, why in zip(addresses, answers, strict=True) if why]
        if refused:
            await self._release_at(plan_)
            return "; ".join(f"{a}: {why}" for a, why in refused)
        return ""

    async def _release(self, placed: list[common_pb2.Bundle]) -> None:
        alive = self._alive()
        by_address: dict[str, list[common_pb2.Bundle]] = {}
        for b in placed:
            node = alive.get(b.node_id)
            if node is not None:  # a dead node's bundles went with it
                by_address.setdefault(node.address, []).append(b)
        await self._release_at(by_address)

    async def _release_at(self, by_address: dict[str, list[common_pb2.Bundle]]) -> None:
        answers = await asyncio.gather(*(self._nodes.release(a, bs) for a, bs in by_address.items()))
        for address, why in zip(by_address, answers, strict=True):
            if why:
                logger.info("releasing bundles on %s failed: %s", address, why)

    # ---- internals -----------------------------------------------------------------

    def _put(self, row: gcs_pb2.PlacementGroupRow) -> None:
        self._state.put_placement_group(row)
        self._written()

    def _written(self) -> None:
        self._publish()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
