"""ClusterView: the global scheduler's picture of the nodes, and placement. Pure: no I/O.

The view is fed rows of the GCS ``nodes`` table (``update``/``apply``, or ``reset`` with a
fresh snapshot). ``place`` asks the policy to pick among the feasible nodes and then
charges the chosen node *optimistically*: its available resources drop by the task's
demand and its queue grows by one, until the node's next row (its next heartbeat)
replaces the guess with the truth. Without this a burst of spilled tasks, placed between
two heartbeats, would all land on the node that looked best at the first one.

A node is *feasible* for a task when it is alive and its *total* resources hold the task:
it could run it some day. When no node is, the task must wait for one to join
(``SchedulerService`` keeps the call open and retries on every change of the view;
``version`` counts the changes).

``PlacementAttempts`` is one task's way through the view: it follows the task's
scheduling strategy (default policy, spread, or affinity to one node), may place the task
back on the node that spilled it (its *home*) when that is the best place, leaves out nodes
that failed to take it until they send a newer row, and says whether to forward, wait, or
fail the task (``Unschedulable``: its strategy names a node that is gone).

Examples
--------
>>> from runtime.protocol import common_pb2, gcs_pb2
>>> view = ClusterView()
>>> view.update(gcs_pb2.NodeRow(node_id=b"a", address="127.0.0.1:7001", alive=True,
...     load=common_pb2.NodeLoad(total={"CPU": 2}, available={"CPU": 2})))
>>> view.place({"CPU": 1}).address
'127.0.0.1:7001'
>>> view.node(b"a").available, view.node(b"a").queue_length
({'CPU': 1.0}, 1)
>>> view.place({"GPU": 1}) is None      # no node could ever run it
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from runtime._ids import short
from runtime.config import Settings
from runtime.protocol import common_pb2, gcs_pb2
from runtime.scheduler.policies.base import InputLike, Policy, fits

__all__ = ["DEFAULT", "NODE_AFFINITY", "SPREAD", "ClusterView", "InputLocation", "NodeView", "Placement",
           "PlacementAttempts", "StrategyLike", "Unschedulable", "Wait", "check_resources"]


@dataclass
class NodeView:
    """One node as the scheduler sees it: the last row from the GCS plus optimistic charges."""

    node_id: bytes  #: 16-byte node id
    address: str  #: ``host:port`` of its node manager
    alive: bool = True  #: False once the GCS declared it dead
    total: dict[str, float] = field(default_factory=dict)  #: what it has in all
    available: dict[str, float] = field(default_factory=dict)  #: what is free (after charges)
    queue_length: int = 0  #: tasks waiting there (after charges)
    last_heartbeat: float = 0.0  #: unix seconds of the row's heartbeat
    charged: int = 0  #: tasks placed here since the row arrived

    @classmethod
    def from_row(cls, row: gcs_pb2.NodeRow) -> NodeView:
        """The view of a ``NodeRow`` from the GCS ``nodes`` table."""
        return cls(node_id=row.node_id, address=row.address, alive=row.alive,
                   total=dict(row.load.total), available=dict(row.load.available),
                   queue_length=row.load.queue_length, last_heartbeat=row.last_heartbeat)


@dataclass(frozen=True)
class InputLocation:
    """A task input: ``size`` bytes, copies on ``node_ids`` (``scheduler_pb2.InputLocation`` also fits)."""

    object_id: bytes
    size: int
    node_ids: frozenset[bytes] = frozenset()


@dataclass(frozen=True)
class Placement:
    """Where ``place`` put a task, why, and what it charged there (``refund`` undoes that)."""

    node_id: bytes
    address: str
    cost: float  #: the policy's estimate (seconds for locality, load for spread)
    why: str  #: human-readable reason, for logs and events
    resources: Mapping[str, float]
    row_version: int  #: the node's row version when charged


@dataclass(frozen=True)
class Wait:
    """No node can take the task now: wait for the view to change, then try again."""

    why: str


@dataclass(frozen=True)
class Unschedulable:
    """No node can ever take the task (its strategy names a node that is gone): fail it."""

    why: str


class StrategyLike(Protocol):
    """A task's scheduling strategy (``common_pb2.SchedulingStrategy`` fits)."""

    @property
    def kind(self) -> str: ...

    @property
    def node_id(self) -> bytes: ...

    @property
    def soft(self) -> bool: ...


#: ``StrategyLike.kind`` values the view acts on.
DEFAULT, SPREAD, NODE_AFFINITY = "DEFAULT", "SPREAD", "NODE_AFFINITY"


def check_resources(resources: Mapping[str, float]) -> dict[str, float]:
    """``resources`` as a plain dict; raises ``ValueError`` naming any negative or non-finite amount."""
    bad = {k: v for k, v in resources.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise ValueError(f"resource amounts must be finite and >= 0, got {bad}")
    return dict(resources)


class ClusterView:
    """The nodes a global scheduler knows and the placement decisions it makes.

    Parameters
    ----------
    policy
        Picks among feasible nodes; default ``LocalityPolicy()``.
    """

    def __init__(self, policy: Policy | None = None, *, max_candidates: int = Settings.placement_candidates,
                 rng: random.Random | None = None) -> None:
        if policy is None:
            from runtime.scheduler.policies import make_policy
            policy = make_policy("locality")
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates!r}")
        self.policy = policy
        self.max_candidates = max_candidates
        self._rng = rng or random.Random()
        self._spread: Policy | None = None
        self._nodes: dict[bytes, NodeView] = {}
        #: The node ids in a list, for sampling (rebuilt when one joins or leaves).
        self._listed: list[bytes] | None = None
        self._row_versions: dict[bytes, int] = {}
        #: Bumped on every change from the GCS (not on charges); waiters retry when it moves.
        self.version = 0
        #: False while the feed has lost the GCS (``NodeFeed``): nodes that joined meanwhile
        #: are missing, so a node unknown here may exist. A snapshot (``reset``) makes it True.
        self.current = True

    def spread_policy(self) -> Policy:
        """The policy of ``"SPREAD"`` tasks (least loaded node), whatever the view's own."""
        if self._spread is None:
            from runtime.scheduler.policies import make_policy
            self._spread = make_policy("spread")
        return self._spread

    # ---- input: rows from the GCS ----

    def update(self, row: gcs_pb2.NodeRow) -> None:
        """Take a node's new row as the truth (dropping optimistic charges on it)."""
        if row.node_id not in self._nodes:
            self._listed = None
        self._nodes[row.node_id] = NodeView.from_row(row)
        self._row_versions[row.node_id] = self._row_versions.get(row.node_id, 0) + 1
        self.version += 1

    def remove(self, node_id: bytes) -> None:
        """Forget a node whose row was deleted."""
        if self._nodes.pop(node_id, None) is not None:
            self._listed = None
            self._row_versions[node_id] = self._row_versions.get(node_id, 0) + 1
            self.version += 1

    def apply(self, key: bytes, value: bytes, deleted: bool = False) -> None:
        """Apply one change of the ``nodes`` table (a serialized ``NodeRow``, or a deletion)."""
        if deleted or not value:
            self.remove(key)
        else:
            self.update(gcs_pb2.NodeRow.FromString(value))

    def reset(self, rows: Iterable[gcs_pb2.NodeRow]) -> None:
        """Replace every node with a fresh snapshot (after resubscribing)."""
        fresh = {row.node_id: row for row in rows}
        for node_id in [n for n in self._nodes if n not in fresh]:
            self.remove(node_id)
        for row in fresh.values():
            self.update(row)
        self.current = True
        self.version += 1

    # ---- queries ----

    def node(self, node_id: bytes) -> NodeView | None:
        """The view of ``node_id``, or None."""
        return self._nodes.get(node_id)

    def nodes(self) -> list[NodeView]:
        """Every known node, dead ones included."""
        return list(self._nodes.values())

    def row_version(self, node_id: bytes) -> int:
        """How many rows of ``node_id`` the view has taken (0: never seen). A change means news."""
        return self._row_versions.get(node_id, 0)

    def feasible(self, resources: Mapping[str, float]) -> list[NodeView]:
        """Alive nodes whose total resources hold ``resources`` (it could run there some day)."""
        return [n for n in self._nodes.values() if n.alive and fits(resources, n.total)]

    def __len__(self) -> int:
        return len(self._nodes)

    # ---- decisions ----

    def place(self, resources: Mapping[str, float], inputs: Sequence[InputLike] = (),
              exclude: Collection[bytes] = frozenset(), policy: Policy | None = None,
              only: Collection[bytes] | None = None, prefer: Collection[bytes] = ()) -> Placement | None:
        """Pick a feasible node not in ``exclude`` (among ``only``, when given) with
        ``policy`` (default: the view's) and charge it; None when there is none.

        In a cluster of more than ``max_candidates`` nodes the policy scores the feasible
        nodes among those holding the inputs, ``prefer`` and a random sample, not all.

        Raises ``ValueError`` for negative or non-finite resource amounts.
        """
        need = check_resources(resources)
        candidates = self._candidates(need, inputs, exclude, only, prefer)
        if not candidates:
            return None
        choice = (policy or self.policy).choose(candidates, need, inputs)
        node = choice.node
        for key, amount in need.items():
            node.available[key] = node.available.get(key, 0.0) - amount
        node.queue_length += 1
        node.charged += 1
        return Placement(node.node_id, node.address, choice.cost, choice.why, need,
                         self.row_version(node.node_id))

    def _candidates(self, need: Mapping[str, float], inputs: Sequence[InputLike], exclude: Collection[bytes],
                    only: Collection[bytes] | None, prefer: Collection[bytes]) -> list[NodeView]:
        """The feasible nodes the policy chooses among (see ``place``)."""
        nodes = self._nodes
        if only is not None:
            picked = [nodes[n] for n in only if n in nodes]
        elif len(nodes) <= self.max_candidates:
            picked = list(nodes.values())
        else:
            seen: dict[bytes, NodeView] = {}
            for node_id in [*prefer, *(n for i in inputs for n in i.node_ids)]:
                node = nodes.get(node_id)
                if node is not None:
                    seen[node_id] = node
            listed = self._listed
            if listed is None:
                listed = self._listed = list(nodes)
            for node_id in self._rng.sample(listed, min(len(listed), 2 * self.max_candidates)):
                if len(seen) >= self.max_candidates:
                    break
                if node_id not in seen:
                    seen[node_id] = nodes[node_id]
            picked = list(seen.values())
        found = [n for n in picked if n.alive and n.node_id not in exclude and fits(need, n.total)]
        if not found and only is None and len(picked) < len(nodes):
            found = [n for n in self.feasible(need) if n.node_id not in exclude]  # rare: a needle
        return found

    def refresh(self, node_id: bytes, load: common_pb2.NodeLoad) -> None:
        """Merge ``load``, what ``node_id`` sent with a spill (fresher than its last row), into
        its view, keeping the busier of the two for each figure: the row may be stale, and
        the load cannot show the tasks placed back on it whose answers are on their way."""
        node = self._nodes.get(node_id)
        if node is None:
            return
        node.available = {k: min(v, load.available.get(k, 0.0)) for k, v in node.available.items()}
        node.queue_length = max(node.queue_length, load.queue_length)

    def refund(self, placement: Placement) -> None:
        """Undo ``placement``'s charge (the node refused the task), unless a newer row came since."""
        node = self._nodes.get(placement.node_id)
        if node is None or self.row_version(placement.node_id) != placement.row_version:
            return
        for key, amount in placement.resources.items():
            node.available[key] = node.available.get(key, 0.0) + amount
        node.queue_length = max(0, node.queue_length - 1)
        node.charged = max(0, node.charged - 1)

    def describe_infeasible(self, resources: Mapping[str, float]) -> str:
        """Why no node fits ``resources``: for the log line of a task that has to wait."""
        alive = [n for n in self._nodes.values() if n.alive]
        if not alive:
            return "no live node is known"
        biggest = ", ".join(f"{short(n.node_id)} {n.total}" for n in alive[:4])
        more = f" and {len(alive) - 4} more" if len(alive) > 4 else ""
        return f"{len(alive)} live node(s) ({biggest}{more}) but none has {dict(resources)} in total"


class PlacementAttempts:
    """One task's placement attempts: ``next()`` until a node accepts; ``failed()`` after a refusal.

    Parameters
    ----------
    view
        The cluster view to place on.
    resources, inputs
        What the task needs, where its inputs are.
    home
        The node that spilled the task (empty: none). It is a candidate like any other:
        when the policy finds it the best place (every other node is as busy, or its inputs
        are there), the task is placed back on it, and it runs the task without spilling it
        again (a placed task is never spilled twice for being busy).
    strategy
        The task's ``SchedulingStrategy`` (``kind`` empty or ``"DEFAULT"``: the view's
        policy; ``"SPREAD"``: the least loaded node; ``"NODE_AFFINITY"``: its node).
    home_load
        The home's load when it spilled the task; merged into the home's view (a stale row
        would make a busy home look free, and the task come back to wait).

    Examples
    --------
    >>> from runtime.protocol import common_pb2, gcs_pb2
    >>> view = ClusterView()
    >>> view.update(gcs_pb2.NodeRow(node_id=b"h", address="h:1", alive=True,
    ...     load=common_pb2.NodeLoad(total={"CPU": 2}, available={"CPU": 0})))
    >>> PlacementAttempts(view, {"CPU": 1}, home=b"h").next().node_id
    b'h'
    >>> PlacementAttempts(view, {"GPU": 1}, home=b"h").next().why
    "1 live node(s) (68 {'CPU': 2.0}) but none has {'GPU': 1} in total"
    """

    def __init__(self, view: ClusterView, resources: Mapping[str, float], inputs: Sequence[InputLike] = (),
                 home: bytes = b"", strategy: StrategyLike | None = None,
                 home_load: common_pb2.NodeLoad | None = None) -> None:
        if home and home_load is not None and home_load.total:
            view.refresh(home, home_load)  # the home is busier than its last row says: it spilled
        self.view = view
        self.resources = check_resources(resources)
        self.inputs = inputs
        self.home = home
        self.kind = (strategy.kind if strategy is not None else "") or DEFAULT
        self.affinity = strategy.node_id if strategy is not None and self.kind == NODE_AFFINITY else b""
        self.soft = bool(strategy is not None and strategy.soft)
        self._failed: dict[bytes, int] = {}  # node -> its row version when it failed to take the task

    def next(self) -> Placement | Wait | Unschedulable:
        """Where to forward the task now (charged in the view), or why not."""
        view = self.view
        exclude = {n for n, v in self._failed.items() if view.row_version(n) == v}
        if self.affinity:
            step = self._affine(exclude)
            if step is not None:
                return step
        policy = view.spread_policy() if self.kind == SPREAD else None
        placement = view.place(self.resources, self.inputs, exclude, policy,
                               prefer=(self.home,) if self.home else ())
        if placement is not None:
            return placement
        feasible = view.feasible(self.resources)
        if not feasible:
            return Wait(view.describe_infeasible(self.resources))
        return Wait(f"every node that could run it ({len(feasible)}) failed to take it; "
                    "trying again when one sends news")

    def _affine(self, exclude: Collection[bytes]) -> Placement | Wait | Unschedulable | None:
        """The node-affinity decision, or None to place as by default (soft, target unusable)."""
        target = self.view.node(self.affinity)
        name = f"node {short(self.affinity)}"
        if target is None or not target.alive:
            if self.soft:
                return None
            if target is None and not self.view.current:  # it may have joined while the GCS was away
                return Wait(f"its NodeAffinitySchedulingStrategy(soft=False) names {name}, unknown to "
                            "this scheduler while it reconnects to the GCS; it waits for the GCS's nodes")
            state = "is dead" if target is not None else "is not in the cluster"
            return Unschedulable(f"its NodeAffinitySchedulingStrategy(soft=False) names {name}, "
                                 f"which {state}")
        if not fits(self.resources, target.total):
            if self.soft:
                return None
            return Wait(f"{name} has {target.total} in total, not {dict(self.resources)}; "
                        "NodeAffinitySchedulingStrategy(soft=False) keeps it waiting for that node")
        if target.node_id in exclude:
            return Wait(f"{name} failed to take it; trying again when it sends news")
        placement = self.view.place(self.resources, self.inputs, only=(target.node_id,))
        assert placement is not None
        return replace(placement, why=f"node affinity to {name}")

    def failed(self, placement: Placement) -> None:
        """The node of ``placement`` did not take the task: undo the charge, skip it until its next row."""
        self.view.refund(placement)
        self._failed[placement.node_id] = placement.row_version
