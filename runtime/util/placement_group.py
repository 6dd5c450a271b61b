"""Placement groups, with Ray's API: bundles of resources reserved across nodes, all or nothing.

A placement group reserves *bundles* (``{"CPU": 1, "GPU": 1}`` ...) on the cluster's nodes,
placed by a *strategy*, and only once every bundle fits (two-phase, in the GCS). Tasks and
actors then run inside a bundle with ``PlacementGroupSchedulingStrategy``, on the resources
it reserved and on its node::

    import runtime as rt
    from runtime.util import placement_group, remove_placement_group
    from runtime.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": 1, "GPU": 1}] + [{"CPU": 1}] * 4, strategy="PACK")
    rt.get(pg.ready())                       # or: pg.wait(timeout_seconds=30)
    learner = Learner.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=0)).remote()
    ...
    remove_placement_group(pg)               # what still runs in it stops

Strategies: ``"PACK"`` (as few nodes as possible), ``"SPREAD"`` (distinct nodes when
possible), ``"STRICT_PACK"`` (one node, or wait), ``"STRICT_SPREAD"`` (every bundle on its
own node, or wait). A group that cannot be placed waits, PENDING, without blocking other
work; ``placement_group_table()`` and ``runtime.state.list_placement_groups()`` say why.
When a node holding bundles dies, those bundles are placed again (RESCHEDULING).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from runtime import _ids
from runtime.api import _context
from runtime.api._object_ref import ObjectRef
from runtime.exceptions import ClientClosedError
from runtime.protocol import common_pb2, gcs_pb2
from runtime.protocol.states import Lifetime, PlacementGroupState, PlacementStrategy

if TYPE_CHECKING:
    from runtime.api._remote_function import RemoteFunction
    from runtime.gcs.client import GcsClient

_T = TypeVar("_T")

__all__ = ["PlacementGroup", "PlacementGroupID", "get_current_placement_group", "get_placement_group",
           "placement_group", "placement_group_table", "remove_placement_group"]

_STRATEGIES: tuple[str, ...] = tuple(s.value for s in PlacementStrategy)


class PlacementGroupID:
    """A placement group's id: ``hex()`` and ``binary()``, as Ray's."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        self._raw = bytes(raw)

    def binary(self) -> bytes:
        return self._raw

    def hex(self) -> str:
        return self._raw.hex()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self.hex()})"


def _gcs(call: Callable[[GcsClient], Coroutine[Any, Any, _T]], extra_s: float = 0.0) -> _T:
    """Run ``call(gcs)`` on the current connection's IO loop (deadline: the RPC timeout plus
    ``extra_s``)."""
    client = _context.current()
    gcs = client.gcs
    if gcs is None or client.closed:
        raise ClientClosedError("This cluster connection was shut down. Call runtime.init() again.")
    return client.run(call(gcs), client.settings.rpc_timeout_s + extra_s)


def _row(pg_id: bytes) -> gcs_pb2.PlacementGroupRow | None:
    return _gcs(lambda gcs: gcs.get_placement_group(pg_id))


def _bundle_dicts(row: gcs_pb2.PlacementGroupRow) -> list[dict[str, float]]:
    return [dict(b.resources) for b in sorted(row.bundles, key=lambda b: b.index)]


class PlacementGroup:
    """A handle to a placement group (``placement_group(...)`` makes one).

    Attributes
    ----------
    id : PlacementGroupID
        The group's id (``pg.id.hex()``).
    bundle_specs : list of dict
        The bundles, as asked for (``[{"CPU": 1.0}, ...]``).
    bundle_count : int
        How many bundles.

    Handles pickle, so they can be passed to tasks and actors.
    """

    def __init__(self, id: PlacementGroupID, bundle_cache: list[dict[str, float]] | None = None) -> None:
        self.id = id
        self._bundle_cache = bundle_cache

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        """The bundles, in order (fetched from the GCS the first time when not known)."""
        if self._bundle_cache is None:
            row = _row(self.id.binary())
            if row is None:
                raise ValueError(f"placement group {self.id.hex()} is unknown to this cluster")
            self._bundle_cache = _bundle_dicts(row)
        return [dict(b) for b in self._bundle_cache]

    @property
    def bundle_count(self) -> int:
        """How many bundles the group has."""
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """An ObjectRef that resolves to this group once it is created (as Ray: a task that
        needs no CPU runs in bundle 0 and returns the group).

        ``rt.get(pg.ready(), timeout=...)`` waits for it; ``rt.wait([pg.ready()], ...)`` too.
        A group that is never placed (infeasible, or removed) never resolves it.
        """
        from runtime.api._remote_function import RemoteFunction
        from runtime.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        global _check
        if _check is None:  # made once: its export (pickling) is done once per process
            _check = RemoteFunction(_bundle_reservation_check,
                                    {"num_cpus": 0, "name": "bundle_reservation_check"})
        ref: ObjectRef = _check.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            self, placement_group_bundle_index=0)).remote(self)
        return ref

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Wait up to ``timeout_seconds`` for the group to be created: True once it is, False
        when the time passed first (it keeps waiting to be placed) or it was removed."""
        if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, numbers.Real) \
                or not float(timeout_seconds) >= 0:
            raise ValueError(f"timeout_seconds must be a number >= 0, got {timeout_seconds!r}")
        timeout = float(timeout_seconds)
        ready, _ = _gcs(lambda gcs: gcs.wait_placement_group(self.id.binary(), timeout), timeout)
        return ready

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self.id.binary(), self._bundle_cache)

    def __repr__(self) -> str:
        count = "?" if self._bundle_cache is None else len(self._bundle_cache)
        return f"PlacementGroup(id={self.id.hex()}, bundles={count})"


#: The task ``PlacementGroup.ready()`` submits (made on first use).
_check: RemoteFunction[[PlacementGroup], PlacementGroup] | None = None


def _rebuild(raw: bytes, bundles: list[dict[str, float]] | None) -> PlacementGroup:
    return PlacementGroup(PlacementGroupID(raw), bundles)


def _bundle_reservation_check(pg: PlacementGroup) -> PlacementGroup:
    return pg


def _check_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("placement_group(bundles=...) needs a non-empty list of bundles, each a dict "
                         "of resource name -> amount, e.g. [{'CPU': 1}, {'CPU': 1, 'GPU': 1}]; "
                         f"got {bundles!r}")
    out = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, Mapping):
            raise ValueError(f"bundle {i} must be a dict of resource name -> amount, got {bundle!r}")
        for k, v in bundle.items():
            if not isinstance(k, str) or not k:
                raise ValueError(f"bundle {i}: resource names must be non-empty strings, got {k!r}")
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v) >= 0:
                raise ValueError(f"bundle {i}: the amount of {k!r} must be a number >= 0, got {v!r}")
        if not any(float(v) > 0 for v in bundle.values()):
            raise ValueError(f"bundle {i} asks for nothing ({dict(bundle)!r}): a bundle cannot be empty "
                             "or all zeros")
        out.append({k: float(v) for k, v in bundle.items() if float(v) > 0})
    return out


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None,
                    _max_cpu_fraction_per_node: float | None = None) -> PlacementGroup:
    """Reserve ``bundles`` of resources across the cluster's nodes, all or nothing.

    Returns at once; the GCS places the group as soon as the nodes have room (``pg.ready()``,
    ``pg.wait()``). A group that cannot be placed waits, PENDING, and says why in
    ``placement_group_table()``.

    Parameters
    ----------
    bundles : list of dict
        Each bundle is a dict of resource name -> amount (``{"CPU": 2, "GPU": 1}``),
        reserved together on one node.
    strategy : {"PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"}
        PACK: as few nodes as possible; SPREAD: distinct nodes when possible; STRICT_PACK:
        all on one node; STRICT_SPREAD: each bundle on a different node.
    name : str
        Find the group later with ``get_placement_group(name)``; unique among live groups.
    lifetime : None or "detached"
        None: the group is removed when the job (driver) that made it finishes.
        "detached": it stays until ``remove_placement_group``.
    _max_cpu_fraction_per_node : float, optional
        Accepted for compatibility with Ray (deprecated there); must be in (0, 1]. Not used.

    Raises
    ------
    ValueError
        For empty bundles, a bundle of zeros or negative amounts, an unknown strategy or
        lifetime, or a name another live group has.

    Examples
    --------
    >>> pg = placement_group([{"CPU": 1}] * 3, strategy="SPREAD")     # doctest: +SKIP
    >>> pg.wait(timeout_seconds=10)                                   # doctest: +SKIP
    True
    """
    checked = _check_bundles(bundles)
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, _STRATEGIES))}, got {strategy!r}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {name!r}")
    if lifetime not in (None, Lifetime.DETACHED):
        raise ValueError(f"lifetime must be None (removed with its job) or 'detached', got {lifetime!r}")
    fraction = _max_cpu_fraction_per_node
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, numbers.Real)
                                 or not 0 < float(fraction) <= 1):
        raise ValueError(f"_max_cpu_fraction_per_node must be in (0, 1], got {fraction!r}")
    client = _context.current()
    stack = client.task_stack
    row = gcs_pb2.PlacementGroupRow(
        placement_group_id=_ids.new_id(), name=name, namespace=_context.namespace_of(client),
        strategy=strategy,
        job_id=stack[-1].job_id if stack else client.job_id, detached=lifetime == Lifetime.DETACHED,
        owner_id=client.client_id)
    for resources in checked:
        row.bundles.append(common_pb2.Bundle(resources=resources))
    pg_id = _gcs(lambda gcs: gcs.create_placement_group(row))
    return PlacementGroup(PlacementGroupID(pg_id), checked)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Remove the group: its bundles are released on their nodes, and the tasks and actors
    still running in it stop (actors die, tasks are cancelled). Removing it twice is fine."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group() takes a PlacementGroup, got {placement_group!r}")
    pg_id = placement_group.id.binary()
    _gcs(lambda gcs: gcs.remove_placement_group(pg_id))


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group named ``placement_group_name``. Raises ``ValueError`` when there is none."""
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError(f"get_placement_group() needs a group's name, got {placement_group_name!r}")
    namespace = _context.namespace_of(_context.current())
    row = _gcs(lambda gcs: gcs.get_placement_group(name=placement_group_name, namespace=namespace))
    if row is None:
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name} (no live "
                         "group has it; see placement_group_table())")
    return PlacementGroup(PlacementGroupID(row.placement_group_id), _bundle_dicts(row))


def _scheduling_state(row: gcs_pb2.PlacementGroupRow) -> str:
    if row.state == PlacementGroupState.CREATED:
        return "FINISHED"
    if row.state == PlacementGroupState.REMOVED:
        return "REMOVED"
    if row.infeasible:
        return "INFEASIBLE"
    return "NO_RESOURCES" if row.why else "QUEUED"


def _table_entry(row: gcs_pb2.PlacementGroupRow) -> dict[str, Any]:
    placed = [b for b in row.bundles if b.node_id]
    latency = (row.ready_time - row.create_time) * 1000 if row.ready_time else 0.0
    return {
        "placement_group_id": row.placement_group_id.hex(),
        "name": row.name,
        "bundles": {b.index: dict(b.resources) for b in row.bundles},
        "bundles_to_node_id": {b.index: b.node_id.hex() for b in placed},
        "strategy": row.strategy,
        "state": row.state,
        "why": row.why,
        "is_detached": row.detached,
        "job_id": row.job_id.hex(),
        "stats": {"end_to_end_creation_latency_ms": latency, "scheduling_latency_ms": latency,
                  "scheduling_attempt": row.attempts, "scheduling_state": _scheduling_state(row)},
    }


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """The GCS's record of one group, or of every group (a dict by hex id), as Ray shows it.

    Each entry has ``placement_group_id``, ``name``, ``bundles`` (index -> resources),
    ``bundles_to_node_id`` (index -> node id, for placed bundles), ``strategy``, ``state``
    (PENDING, CREATED, RESCHEDULING, REMOVED), ``why`` (why it waits), ``is_detached``,
    ``job_id`` and ``stats`` (``scheduling_attempt``, ``scheduling_state``: QUEUED,
    NO_RESOURCES, INFEASIBLE, FINISHED or REMOVED, creation latency).
    """
    if placement_group is not None:
        row = _row(placement_group.id.binary())
        if row is None:
            raise ValueError(f"placement group {placement_group.id.hex()} is unknown to this cluster")
        return _table_entry(row)
    rows = _gcs(lambda gcs: gcs.list_table("placement_groups"))
    entries = sorted((gcs_pb2.PlacementGroupRow.FromString(v) for _, v in rows),
                     key=lambda r: (r.create_time, r.placement_group_id))
    return {r.placement_group_id.hex(): _table_entry(r) for r in entries}


def get_current_placement_group() -> PlacementGroup | None:
    """The group the calling task or actor runs in; None in a driver or outside any group.

    Use it to run more work in the same group::

        pg = get_current_placement_group()
        f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote()
    """
    stack = _context.current().task_stack
    if stack and stack[-1].strategy.placement_group_id:
        return PlacementGroup(PlacementGroupID(stack[-1].strategy.placement_group_id))
    return None
