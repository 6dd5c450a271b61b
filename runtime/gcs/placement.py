"""Where the bundles of a placement group go: a pure planner (no I/O, no clock).

``plan`` takes the live nodes (their total and available resources, as the GCS ``nodes``
table has them) and the bundles still to place, and returns either the node of every one
of them (``Placed``) or why that cannot be done now (``Unplaced``). ``Unplaced.infeasible``
says whether it could ever be done with these nodes (the plan fails against their
*totals* too) or whether it only waits for resources to free up.

The four strategies are Ray's:

``PACK``
    All bundles on one node when one has room (a node already holding bundles of the group
    first); else as few nodes as possible: the biggest bundle first, onto a node in use
    when it fits, else onto the node with the most room.
``SPREAD``
    Each bundle on the node holding the fewest bundles of the group that fits it; nodes
    are shared only when there are not enough of them.
``STRICT_PACK``
    All bundles on one node, or none.
``STRICT_SPREAD``
    Every bundle on a different node (and none on a node holding an earlier bundle of the
    group), or none: a bipartite matching of bundles to nodes, so a fit is found whenever
    one exists.

``fixed`` names the bundles of the group that stay where they are (a group whose node
died places only the lost bundles again); the strategies take them into account.

Examples
--------
>>> nodes = [NodeRoom(b"a", {"CPU": 2}, {"CPU": 2}), NodeRoom(b"b", {"CPU": 2}, {"CPU": 2})]
>>> plan("STRICT_SPREAD", {0: {"CPU": 1}, 1: {"CPU": 1}}, nodes)
Placed(nodes={0: b'a', 1: b'b'})
>>> plan("STRICT_PACK", {0: {"CPU": 2}, 1: {"CPU": 1}}, nodes).infeasible
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from runtime.protocol.resources import EPSILON, describe, fits
from runtime.protocol.states import PlacementStrategy

__all__ = ["NodeRoom", "Placed", "Unplaced", "plan"]

Need = Mapping[str, float]
#: node id -> resources left on it, changed as bundles are assigned.
_Room = dict[bytes, dict[str, float]]
_Policy = Callable[[Mapping[int, Need], _Room, Mapping[int, bytes]], "dict[int, bytes] | None"]


@dataclass(frozen=True)
class NodeRoom:
    """One live node as the planner sees it."""

    node_id: bytes  #: the node's id
    total: Mapping[str, float]  #: everything it has
    available: Mapping[str, float]  #: what is free now (running work and other bundles hold the rest)


@dataclass(frozen=True)
class Placed:
    """A node for every bundle asked for."""

    nodes: dict[int, bytes]  #: bundle index -> node id


@dataclass(frozen=True)
class Unplaced:
    """The bundles cannot be placed now."""

    why: str  #: a sentence for the user (``rt.state``, the dashboard)
    infeasible: bool  #: True: not even idle nodes could hold them; False: they wait for room


def plan(strategy: str, bundles: Mapping[int, Need], nodes: Sequence[NodeRoom],
         fixed: Mapping[int, bytes] | None = None) -> Placed | Unplaced:
    """Place ``bundles`` (index -> resources) on ``nodes`` with ``strategy``.

    ``fixed`` (index -> node id) are bundles of the same group that stay where they are.
    Raises ``ValueError`` for an unknown strategy.
    """
    policy = _POLICIES.get(strategy)
    if policy is None:
        raise ValueError(f"unknown placement strategy {strategy!r}; use one of "
                         f"{', '.join(PlacementStrategy)}")
    fixed = dict(fixed or {})
    if not bundles:
        return Placed({})
    if not nodes:
        return Unplaced("no node is alive; it waits until one joins", infeasible=True)
    ordered = sorted(nodes, key=lambda n: n.node_id)
    got = policy(bundles, {n.node_id: dict(n.available) for n in ordered}, fixed)
    if got is not None:
        return Placed(got)
    infeasible = policy(bundles, {n.node_id: dict(n.total) for n in ordered}, fixed) is None
    return Unplaced(_why(strategy, bundles, ordered, fixed, infeasible), infeasible)


# ---- the strategies ------------------------------------------------------------------


def _pack(bundles: Mapping[int, Need], room: _Room, fixed: Mapping[int, bytes]) -> dict[int, bytes] | None:
    used = [n for n in dict.fromkeys(fixed.values()) if n in room]
    whole = _sum(bundles.values())
    for node in [*used, *_by_room(room, exclude=used)]:
        if fits(whole, room[node]):
            return dict.fromkeys(bundles, node)
    out: dict[int, bytes] = {}
    for i, need in _biggest_first(bundles):
        found = next((n for n in used if fits(need, room[n])), None)
        if found is None:
            found = next((n for n in _by_room(room) if fits(need, room[n])), None)
        if found is None:
            return None
        node = found
        _take(room, node, need)
        out[i] = node
        if node not in used:
            used.append(node)
    return out


def _spread(bundles: Mapping[int, Need], room: _Room, fixed: Mapping[int, bytes]) -> dict[int, bytes] | None:
    count = Counter(fixed.values())
    out: dict[int, bytes] = {}
    for i, need in _biggest_first(bundles):
        fitting = [n for n in room if fits(need, room[n])]
        if not fitting:
            return None
        node = min(fitting, key=lambda n: (count[n], _bigger_first(room[n]), n))
        _take(room, node, need)
        count[node] += 1
        out[i] = node
    return out


def _strict_pack(bundles: Mapping[int, Need], room: _Room,
                 fixed: Mapping[int, bytes]) -> dict[int, bytes] | None:
    targets = set(fixed.values())
    if len(targets) > 1:
        return None
    whole = _sum(bundles.values())
    candidates = [n for n in targets if n in room] if targets else _by_room(room)
    for node in candidates:
        if fits(whole, room[node]):
            return dict.fromkeys(bundles, node)
    return None


def _strict_spread(bundles: Mapping[int, Need], room: _Room,
                   fixed: Mapping[int, bytes]) -> dict[int, bytes] | None:
    taken = set(fixed.values())
    free = [n for n in _by_room(room) if n not in taken]
    holder: dict[bytes, int] = {}  # node -> the bundle matched to it

    def augment(i: int, seen: set[bytes]) -> bool:
        # Kuhn's augmenting path: a node nobody took that fits, else one whose bundle can
        # move to another node.
        options = [n for n in free if n not in seen and fits(bundles[i], room[n])]
        for node in options:
            if node not in holder:
                holder[node] = i
                return True
        for node in options:
            seen.add(node)
            if augment(holder[node], seen):
                holder[node] = i
                return True
        return False

    for i, _ in _biggest_first(bundles):
        if not augment(i, set()):
            return None
    return dict(sorted((i, node) for node, i in holder.items()))


_POLICIES: dict[str, _Policy] = {
    PlacementStrategy.PACK: _pack, PlacementStrategy.SPREAD: _spread,
    PlacementStrategy.STRICT_PACK: _strict_pack, PlacementStrategy.STRICT_SPREAD: _strict_spread,
}


# ---- helpers -------------------------------------------------------------------------


def _sum(needs: Iterable[Need]) -> dict[str, float]:
    out: dict[str, float] = {}
    for need in needs:
        for k, v in need.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _size(resources: Mapping[str, float]) -> tuple[float, float]:
    """How big a set of resources is, for ordering: CPUs first, then everything else."""
    return resources.get("CPU", 0.0), sum(v for v in resources.values() if v > 0)


def _bigger_first(resources: Mapping[str, float]) -> tuple[float, float]:
    """A sort key that puts bigger sets of resources first."""
    cpus, rest = _size(resources)
    return -cpus, -rest


def _biggest_first(bundles: Mapping[int, Need]) -> list[tuple[int, Need]]:
    return sorted(bundles.items(), key=lambda item: (_bigger_first(item[1]), item[0]))


def _by_room(room: _Room, exclude: Sequence[bytes] = ()) -> list[bytes]:
    """Node ids with the most room first (ties by id)."""
    return sorted((n for n in room if n not in exclude),
                  key=lambda n: (_bigger_first(room[n]), n))


def _take(room: _Room, node: bytes, need: Need) -> None:
    left = room[node]
    for k, v in need.items():
        left[k] = left.get(k, 0.0) - v


def _largest(nodes: Sequence[NodeRoom], names: set[str]) -> str:
    """The biggest total of the nodes, in the resources the group asks for."""
    best = max(nodes, key=lambda n: tuple(n.total.get(k, 0.0) for k in sorted(names)))
    return describe({k: best.total.get(k, 0.0) for k in names})


def _why(strategy: str, bundles: Mapping[int, Need], nodes: Sequence[NodeRoom],
         fixed: Mapping[int, bytes], infeasible: bool) -> str:
    names = {k for need in bundles.values() for k, v in need.items() if v > EPSILON}
    whole = _sum(bundles.values())
    n = len(bundles)
    if infeasible:
        lone = [i for i, need in sorted(bundles.items()) if not any(fits(need, x.total) for x in nodes)]
        if lone:
            i = lone[0]
            head = (f"bundle {i} needs {describe(bundles[i])} but no live node has that much "
                    f"(the largest has {_largest(nodes, names)})")
        elif strategy == PlacementStrategy.STRICT_PACK:
            head = (f"STRICT_PACK needs one node with {describe(whole)} for all {n} bundles, but no "
                    f"live node has that much (the largest has {_largest(nodes, names)})")
        elif strategy == PlacementStrategy.STRICT_SPREAD:
            others = len(set(fixed.values()))
            head = (f"STRICT_SPREAD needs {n + others} different nodes, one per bundle, but only "
                    f"{len(nodes)} node(s) are alive" + (" or not enough of them fit a bundle"
                                                        if len(nodes) >= n + others else ""))
        else:
            head = f"the live nodes together cannot hold {n} bundle(s) of {describe(whole)} ({strategy})"
        return f"infeasible: {head}. It waits until a node that fits joins."
    free = _sum(x.available for x in nodes)
    return (f"waiting for resources: {strategy} of {n} bundle(s) needs {describe(whole)}; the live "
            f"nodes have {describe({k: max(free.get(k, 0.0), 0.0) for k in names})} free now, "
            "not enough where it is needed. It is placed when resources free up.")
