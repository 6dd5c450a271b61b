"""GcsState: the GCS tables and their transitions. Pure: no I/O, no asyncio, no gRPC.

Each key lives in shard ``crc32(key) % num_shards`` (stable across processes, unlike
``hash``); each shard has its own ``Storage``. Rows are serialized protobuf messages from
``gcs.proto``. Every mutation appends ``Change`` records to an outbox that the service
drains with ``take_changes()`` right after the call and publishes, so subscribers see
changes in exactly the order they were applied.

Tables: ``nodes`` (NodeRow), ``jobs`` (JobRow, ids 1, 2, 3... as 4-byte little-endian),
``functions`` (FunctionRow, written once per content hash), ``tasks`` (TaskRow, bounded),
``objects`` (ObjectRow; a row with no location left is deleted), ``events`` (scheduler
decisions as TaskEvents under 8-byte big-endian sequence keys, a bounded ring), and
``actors`` (ActorRow) and ``kv`` (actor names, scheduler replicas), written by the typed
methods below (keys from ``runtime.gcs.keys``) or, generically, by ``put``, and
``placement_groups`` (PlacementGroupRow by group id; placed by ``runtime.gcs.reservations``).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from runtime._ids import short
from runtime.exceptions import InvalidRequestError
from runtime.gcs import keys
from runtime.gcs.fencing import refuse_dead
from runtime.gcs.storage import InMemoryStorage, Storage
from runtime.protocol import common_pb2, gcs_pb2
from runtime.protocol.states import (
    TERMINAL_TASK_STATES,
    ActorState,
    PlacementGroupState,
    PlacementStrategy,
    TaskState,
)

logger = logging.getLogger(__name__)

__all__ = ["PLACEMENT_GROUPS", "PUT_TABLES", "TABLES", "Change", "GcsState", "InvalidRequestError",
           "shard_of"]

TABLES = ("nodes", "jobs", "functions", "tasks", "objects", "events", "actors", "kv", "placement_groups")
#: Tables that ``put`` may write; the others have typed rows written by their own methods.
PUT_TABLES = ("actors", "kv")
#: The table of ``PlacementGroupRow`` s, keyed by group id.
PLACEMENT_GROUPS = "placement_groups"
#: The order of an actor's states within one restart (see ``put_actor``).
_ACTOR_RANK: dict[str, int] = {ActorState.PENDING: 0, ActorState.RESTARTING: 0, ActorState.ALIVE: 1,
                               ActorState.DEAD: 2}
#: The order of a task's states within one attempt (see ``_apply_task_event``).
_TASK_RANK: dict[str, int] = {TaskState.SUBMITTED: 0, TaskState.RETRYING: 0, TaskState.WAITING: 0,
                              TaskState.RUNNING: 2, **dict.fromkeys(TERMINAL_TASK_STATES, 3)}
#: Task states that are scheduler decisions, also logged in the ``events`` table.
DECISION_STATES: frozenset[str] = frozenset({TaskState.SPILLED, TaskState.INFEASIBLE, TaskState.SCHEDULED})


@dataclass(frozen=True)
class Change:
    """One row written (``value`` is the new row) or deleted (``deleted``, empty ``value``)."""

    table: str  #: table name, one of ``TABLES``
    key: bytes  #: the row's key
    value: bytes = b""  #: the serialized row after the change; empty when deleted
    deleted: bool = False


def shard_of(key: bytes, num_shards: int) -> int:
    """The shard that holds ``key``: ``crc32(key) % num_shards``, the same in every process."""
    return zlib.crc32(key) % num_shards


def _require(value: bytes | str, what: str) -> None:
    if not value:
        raise InvalidRequestError(f"{what} is empty; every {what} must be set")


class GcsState:
    """All GCS tables, sharded, with the transitions the services call.

    Parameters
    ----------
    num_shards
        How many shards (each with its own storage) the keys are spread over.
    storage_factory
        Called once per shard to create its ``Storage``.
    clock
        Returns unix seconds; tests inject a fake one to drive heartbeat timeouts.
    max_tasks, max_events, history_len
        Bounds: rows in ``tasks`` (the oldest finished task is evicted first), entries in
        the ``events`` ring, and events kept in each TaskRow's ``history``.

    Examples
    --------
    >>> state = GcsState(num_shards=2)
    >>> state.register_job(gcs_pb2.JobRow(driver_pid=42))
    b'\\x01\\x00\\x00\\x00'
    >>> [c.table for c in state.take_changes()]
    ['jobs']
    """

    def __init__(self, num_shards: int = 4, storage_factory: Callable[[], Storage] = InMemoryStorage,
                 clock: Callable[[], float] = time.time, max_tasks: int = 100_000,
                 max_events: int = 10_000, history_len: int = 8) -> None:
        if num_shards < 1 or max_tasks < 1 or max_events < 1 or history_len < 1:
            raise ValueError(f"GcsState bounds must be >= 1, got num_shards={num_shards}, "
                             f"max_tasks={max_tasks}, max_events={max_events}, history_len={history_len}")
        self.num_shards = num_shards
        self.max_tasks, self.max_events, self.history_len = max_tasks, max_events, history_len
        self._clock = clock
        self._shards: list[Storage] = [storage_factory() for _ in range(num_shards)]
        self._changes: list[Change] = []
        # Rebuilt from storage so a persistent backend resumes where it stopped.
        jobs = [int.from_bytes(k, "little") for k, _ in self.items("jobs")]
        self._next_job = max(jobs, default=0) + 1
        events = [int.from_bytes(k, "big") for k, _ in self.items("events")]
        self._next_event = max(events, default=-1) + 1
        self._task_order: OrderedDict[bytes, None] = OrderedDict()  # every task, oldest first
        self._finished: OrderedDict[bytes, None] = OrderedDict()  # finished tasks, oldest first
        rows = [gcs_pb2.TaskRow.FromString(v) for _, v in self.items("tasks")]
        for row in sorted(rows, key=lambda r: r.submit_time):
            self._task_order[row.task_id] = None
        for row in sorted(rows, key=lambda r: r.end_time):
            if row.state in TERMINAL_TASK_STATES:
                self._finished[row.task_id] = None
        # A node gets a full timeout after a (re)start of the GCS before it is declared dead.
        now = clock()
        self._last_seen = {k: now for k, v in self.items("nodes") if gcs_pb2.NodeRow.FromString(v).alive}

    # ---- generic access ----

    def get(self, table: str, key: bytes) -> bytes | None:
        """The serialized row under ``key``, or None."""
        self._check_table(table)
        _require(key, "key")
        return self._shards[shard_of(key, self.num_shards)].get(table, key)

    def items(self, table: str, limit: int = 0) -> list[tuple[bytes, bytes]]:
        """Rows of ``table`` from every shard (``limit`` > 0: at most that many); events in order."""
        self._check_table(table)
        out: list[tuple[bytes, bytes]] = []
        for shard in self._shards:
            out.extend(shard.items(table))
        if table == "events":
            out.sort()
        return out[:limit] if limit > 0 else out

    def put(self, table: str, key: bytes, value: bytes, only_if_absent: bool = False) -> tuple[bool, bytes]:
        """Write a generic row (``actors``/``kv``); return ``(written, previous value or b"")``.

        An empty ``value`` deletes the row (e.g. a dead actor releasing its name).
        """
        if table not in PUT_TABLES:
            self._check_table(table)
            raise InvalidRequestError(f"table {table!r} has typed rows written by its own service; "
                                      f"Put writes only {', '.join(PUT_TABLES)}")
        existing = self.get(table, key) or b""
        if existing and only_if_absent:
            return False, existing
        if not value:
            if existing:
                self._delete(table, key)
            return True, existing
        self._write(table, key, value)
        return True, existing

    def take_changes(self) -> list[Change]:
        """The changes recorded since the last call, oldest first (the outbox is emptied)."""
        changes, self._changes = self._changes, []
        return changes

    def close(self) -> None:
        """Close every shard's storage."""
        for shard in self._shards:
            shard.close()

    # ---- nodes ----

    def register_node(self, row: gcs_pb2.NodeRow) -> None:
        """Add a node (or one the GCS lost), alive now; ``NodeDiedError`` under a dead id (``fencing``)."""
        _require(row.node_id, "node_id")
        refuse_dead(self._node(row.node_id))
        now = self._clock()
        node = gcs_pb2.NodeRow()
        node.CopyFrom(row)
        node.alive, node.death_cause, node.last_heartbeat = True, "", now
        node.start_time = node.start_time or now
        self._last_seen[node.node_id] = now
        self._write("nodes", node.node_id, node.SerializeToString())

    def heartbeat(self, node_id: bytes, load: common_pb2.NodeLoad) -> bool:
        """Record a node's load; False when the node is unknown (it must register again).

        Raises ``NodeDiedError`` when it was declared dead: it must rejoin under a new id."""
        node = self._node(node_id)
        refuse_dead(node)
        if node is None:
            return False
        now = self._clock()
        node.load.CopyFrom(load)
        node.last_heartbeat = now
        self._last_seen[node_id] = now
        self._write("nodes", node_id, node.SerializeToString())
        return True

    def unregister_node(self, node_id: bytes, cause: str = "") -> gcs_pb2.NodeRow | None:
        """Mark a node dead (its row stays, for good); None when unknown, a dead row unchanged."""
        node = self._node(node_id)
        if node is None or not node.alive:
            return node
        return self._mark_dead(node, cause or "unregistered")

    def check_dead_nodes(self, timeout_s: float) -> list[gcs_pb2.NodeRow]:
        """Mark dead every alive node silent for more than ``timeout_s``; return their rows."""
        now = self._clock()
        dead = []
        for node_id, seen in list(self._last_seen.items()):
            silent = now - seen
            node = self._node(node_id)
            if node is not None and node.alive and silent > timeout_s:
                cause = f"no heartbeat for {silent:.1f} s (timeout {timeout_s:g} s)"
                dead.append(self._mark_dead(node, cause))
        return dead

    # ---- jobs and functions ----

    def register_job(self, row: gcs_pb2.JobRow) -> bytes:
        """Add a job (driver) with the next id, 4-byte little-endian; return the id."""
        job = gcs_pb2.JobRow()
        job.CopyFrom(row)
        job.job_id = self._next_job.to_bytes(4, "little")
        self._next_job += 1
        job.alive, job.start_time = True, job.start_time or self._clock()
        self._write("jobs", job.job_id, job.SerializeToString())
        return job.job_id

    def finish_job(self, job_id: bytes) -> bool:
        """Mark a job finished now; False when it is unknown."""
        raw = self.get("jobs", job_id)
        if raw is None:
            return False
        job = gcs_pb2.JobRow.FromString(raw)
        job.alive, job.end_time = False, self._clock()
        self._write("jobs", job_id, job.SerializeToString())
        return True

    def export_function(self, row: gcs_pb2.FunctionRow) -> bool:
        """Store a function under its content hash once; True when it already existed."""
        _require(row.function_id, "function_id")
        if self.get("functions", row.function_id) is not None:
            return True
        self._write("functions", row.function_id, row.SerializeToString())
        return False

    def get_function(self, function_id: bytes) -> gcs_pb2.FunctionRow | None:
        """The exported function with this content hash, or None."""
        raw = self.get("functions", function_id)
        return None if raw is None else gcs_pb2.FunctionRow.FromString(raw)

    # ---- actors, actor names, scheduler replicas ----

    def put_actor(self, row: gcs_pb2.ActorRow) -> bool:
        """Write an actor's row under its id, unless it is older than the row stored: False then.

        Rows come from more than one node (the creator's writes PENDING, the node the
        actor was placed on writes the rest), so they may arrive out of order. A row is
        older when it has fewer restarts, or as many and an earlier state (PENDING and
        RESTARTING before ALIVE before DEAD); DEAD is final. A row of a live actor written
        by a node declared dead is refused too.
        """
        _require(row.actor_id, "actor_id")
        if row.state != ActorState.DEAD and row.node_id:
            node = self._node(row.node_id)
            if node is not None and not node.alive:
                return False  # written by a node already declared dead: another runs the actor now
        raw = self.get(keys.ACTORS_TABLE, row.actor_id)
        if raw is not None:
            old = gcs_pb2.ActorRow.FromString(raw)
            if old.state == ActorState.DEAD and row.state != ActorState.DEAD:
                return False
            if (row.num_restarts, _ACTOR_RANK.get(row.state, 0)) < (old.num_restarts,
                                                                    _ACTOR_RANK.get(old.state, 0)):
                return False
        self._write(keys.ACTORS_TABLE, row.actor_id, row.SerializeToString())
        return True

    def get_actor(self, actor_id: bytes) -> gcs_pb2.ActorRow | None:
        """The actor's row, or None."""
        raw = self.get(keys.ACTORS_TABLE, actor_id)
        return None if raw is None else gcs_pb2.ActorRow.FromString(raw)

    def claim_actor_name(self, namespace: str, name: str, value: bytes) -> tuple[bool, bytes]:
        """Register ``value`` under the name if it is free: ``(claimed, holder's value or b"")``."""
        _require(namespace, "namespace")
        _require(name, "actor name")
        _require(value, "name value")
        return self.put(keys.KV_TABLE, keys.actor_name_key(namespace, name), value, only_if_absent=True)

    def lookup_actor_name(self, namespace: str, name: str) -> bytes | None:
        """The value registered under the name, or None when it is free."""
        _require(namespace, "namespace")
        _require(name, "actor name")
        return self.get(keys.KV_TABLE, keys.actor_name_key(namespace, name))

    def release_actor_name(self, namespace: str, name: str) -> bool:
        """Free the name; False when it was free already."""
        _require(namespace, "namespace")
        _require(name, "actor name")
        _, existing = self.put(keys.KV_TABLE, keys.actor_name_key(namespace, name), b"")
        return bool(existing)

    def register_scheduler(self, name: str, address: str) -> None:
        """Record the global-scheduler replica ``name`` at ``address`` (``host:port``)."""
        _require(name, "scheduler name")
        _require(address, "scheduler address")
        self.put(keys.KV_TABLE, keys.scheduler_key(name), address.encode())

    def deregister_scheduler(self, name: str) -> bool:
        """Forget the replica ``name``; False when it was not registered."""
        _require(name, "scheduler name")
        _, existing = self.put(keys.KV_TABLE, keys.scheduler_key(name), b"")
        return bool(existing)

    def schedulers(self) -> list[str]:
        """Addresses of the registered global-scheduler replicas, sorted."""
        return sorted(v.decode() for k, v in self.items(keys.KV_TABLE)
                      if k.startswith(keys.SCHEDULER_PREFIX) and v)

    # ---- placement groups ----

    def create_placement_group(self, row: gcs_pb2.PlacementGroupRow) -> gcs_pb2.PlacementGroupRow:
        """Record a new group, PENDING, its bundles numbered 0..n-1 and not placed; return it.

        Raises ``InvalidRequestError`` for a group without id or bundles, a bundle of no or
        negative resources, an unknown strategy, an id in use, or a name in use (in its
        namespace, by a group not REMOVED).
        """
        _require(row.placement_group_id, "placement_group_id")
        if row.strategy not in tuple(PlacementStrategy):
            raise InvalidRequestError(f"unknown strategy {row.strategy!r}; use one of "
                                      f"{', '.join(PlacementStrategy)}")
        if not row.bundles:
            raise InvalidRequestError("a placement group needs at least one bundle")
        for i, bundle in enumerate(row.bundles):
            bad = {k: v for k, v in bundle.resources.items() if not k or not v >= 0}
            if bad or not any(v > 0 for v in bundle.resources.values()):
                raise InvalidRequestError(f"bundle {i} must ask for some resource, each amount >= 0; "
                                          f"got {dict(bundle.resources)}")
        if self.get_placement_group(row.placement_group_id) is not None:
            raise InvalidRequestError(f"placement group {row.placement_group_id.hex()} exists already")
        if row.name and self.find_placement_group(row.namespace, row.name) is not None:
            raise InvalidRequestError(f"a placement group named {row.name!r} exists already in namespace "
                                      f"{row.namespace!r}; remove it first or pick another name")
        group = gcs_pb2.PlacementGroupRow()
        group.CopyFrom(row)
        group.state, group.why, group.attempts, group.infeasible = PlacementGroupState.PENDING, "", 0, False
        group.create_time, group.ready_time = self._clock(), 0.0
        for i, bundle in enumerate(group.bundles):
            bundle.placement_group_id, bundle.index, bundle.node_id = group.placement_group_id, i, b""
        self.put_placement_group(group)
        return group

    def put_placement_group(self, row: gcs_pb2.PlacementGroupRow) -> None:
        """Write a group's row under its id (replacing the previous one)."""
        _require(row.placement_group_id, "placement_group_id")
        self._write(PLACEMENT_GROUPS, row.placement_group_id, row.SerializeToString())

    def get_placement_group(self, pg_id: bytes) -> gcs_pb2.PlacementGroupRow | None:
        """The group's row, or None."""
        raw = self.get(PLACEMENT_GROUPS, pg_id)
        return None if raw is None else gcs_pb2.PlacementGroupRow.FromString(raw)

    def find_placement_group(self, namespace: str, name: str) -> gcs_pb2.PlacementGroupRow | None:
        """The group named ``name`` in ``namespace`` that is not REMOVED, or None."""
        _require(name, "placement group name")
        return next((g for g in self.placement_groups() if g.name == name and g.namespace == namespace
                     and g.state != PlacementGroupState.REMOVED), None)

    def placement_groups(self) -> list[gcs_pb2.PlacementGroupRow]:
        """Every group's row, oldest first."""
        rows = [gcs_pb2.PlacementGroupRow.FromString(v) for _, v in self.items(PLACEMENT_GROUPS)]
        return sorted(rows, key=lambda g: (g.create_time, g.placement_group_id))

    # ---- tasks, objects, scheduler events ----

    def report_events(self, task_events: Iterable[common_pb2.TaskEvent],
                      object_updates: Iterable[gcs_pb2.ObjectLocationUpdate]) -> None:
        """Apply a batch; it is checked whole first, so a bad entry applies nothing."""
        task_events, object_updates = list(task_events), list(object_updates)
        for i, ev in enumerate(task_events):
            _require(ev.task_id, f"task_events[{i}].task_id")
            _require(ev.state, f"task_events[{i}].state")
        for i, up in enumerate(object_updates):
            _require(up.object_id, f"objects[{i}].object_id")
            _require(up.node_id, f"objects[{i}].node_id")
        for ev in task_events:
            self._apply_task_event(ev)
        for up in object_updates:
            self._apply_object_update(up)

    def _apply_task_event(self, ev: common_pb2.TaskEvent) -> None:
        raw = self.get("tasks", ev.task_id)
        row = gcs_pb2.TaskRow(task_id=ev.task_id) if raw is None else gcs_pb2.TaskRow.FromString(raw)
        when = ev.time or self._clock()
        # Batches from different nodes can arrive out of order: an event of an older
        # attempt, or one of an earlier step of the same attempt (the home's SPILLED after
        # the target's RUNNING), joins the history only.
        stale = ev.attempt < row.attempt or (
            ev.attempt == row.attempt and raw is not None
            and _TASK_RANK.get(ev.state, 1) < _TASK_RANK.get(row.state, 1))
        if not stale:
            row.state, row.detail, row.attempt = ev.state, ev.detail, ev.attempt
            row.name = ev.name or row.name
            row.job_id = ev.job_id or row.job_id
            row.actor_id = ev.actor_id or row.actor_id
            row.node_id = ev.node_id or row.node_id
            row.worker_pid = ev.worker_pid or row.worker_pid
            if ev.state == TaskState.SUBMITTED:
                row.submit_time = when
            elif ev.state == TaskState.RUNNING:
                row.start_time = when
            elif ev.state in TERMINAL_TASK_STATES:
                row.end_time = when
        entry = row.history.add()
        entry.CopyFrom(ev)
        entry.time = when
        del row.history[:-self.history_len]
        self._write("tasks", ev.task_id, row.SerializeToString())
        self._task_order.setdefault(ev.task_id, None)
        if row.state in TERMINAL_TASK_STATES:
            self._finished.setdefault(ev.task_id, None)
        else:
            self._finished.pop(ev.task_id, None)
        while len(self._task_order) > self.max_tasks:
            order = self._finished if self._finished else self._task_order
            victim, _ = order.popitem(last=False)
            self._task_order.pop(victim, None)
            self._finished.pop(victim, None)
            self._delete("tasks", victim)
        if ev.state in DECISION_STATES:
            self._append_event(entry)

    def _append_event(self, ev: common_pb2.TaskEvent) -> None:
        seq = self._next_event
        self._next_event += 1
        self._write("events", seq.to_bytes(8, "big"), ev.SerializeToString())
        if seq >= self.max_events:
            self._delete("events", (seq - self.max_events).to_bytes(8, "big"))

    def _apply_object_update(self, up: gcs_pb2.ObjectLocationUpdate) -> None:
        raw = self.get("objects", up.object_id)
        if up.removed:
            if raw is None:
                return
            row = gcs_pb2.ObjectRow.FromString(raw)
            kept = [n for n in row.locations if n != up.node_id]
            if not kept:
                self._delete("objects", up.object_id)
                return
            del row.locations[:]
            row.locations.extend(kept)
        else:
            row = (gcs_pb2.ObjectRow(object_id=up.object_id) if raw is None
                   else gcs_pb2.ObjectRow.FromString(raw))
            if up.node_id not in row.locations:
                row.locations.append(up.node_id)
            row.size = up.size or row.size
            row.owner_id = up.owner_id or row.owner_id
            row.spilled = up.spilled
        self._write("objects", up.object_id, row.SerializeToString())

    # ---- internals ----

    def _node(self, node_id: bytes) -> gcs_pb2.NodeRow | None:
        raw = self.get("nodes", node_id)
        return None if raw is None else gcs_pb2.NodeRow.FromString(raw)

    def _mark_dead(self, node: gcs_pb2.NodeRow, cause: str) -> gcs_pb2.NodeRow:
        node.alive, node.death_cause, node.death_time = False, cause, self._clock()
        self._last_seen.pop(node.node_id, None)
        self._write("nodes", node.node_id, node.SerializeToString())
        logger.warning("node %s (%s) is dead: %s", short(node.node_id), node.address, cause)
        return node

    def _write(self, table: str, key: bytes, value: bytes) -> None:
        self._shards[shard_of(key, self.num_shards)].put(table, key, value)
        self._changes.append(Change(table, key, value))

    def _delete(self, table: str, key: bytes) -> None:
        self._shards[shard_of(key, self.num_shards)].delete(table, key)
        self._changes.append(Change(table, key, deleted=True))

    @staticmethod
    def _check_table(table: str) -> None:
        if table not in TABLES:
            raise InvalidRequestError(f"unknown table {table!r}; the GCS tables are {', '.join(TABLES)}")
