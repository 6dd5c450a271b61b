"""The dashboard's views: immutable pictures of the model that the widgets draw.

``ClusterModel.view(now)`` returns a ``DashboardView``; ``widgets.render`` turns its parts
into HTML and SVG, and each panel shows its part. Pure dataclasses, no ipywidgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.state import NodeState, SchedulerEvent
from widgets.objects_view import ObjectStoreView
from widgets.timeline import TimelineView, window_text

__all__ = [
    "COUNT_KEYS",
    "ActorRowView",
    "ActorsView",
    "DashboardView",
    "FuturesView",
    "NodeSeries",
    "NodeView",
    "PlacementGroupRowView",
    "PlacementGroupsView",
    "SchedulerView",
    "TaskRowView",
]

#: The task counters the Futures section shows, in order.
COUNT_KEYS = ("pending", "sent ahead", "running", "finished", "failed", "cancelled")


@dataclass(frozen=True)
class NodeView:
    """One node as the Nodes section shows it."""

    #: Short id (first hex digits) and 1-based position in start order.
    label: str
    index: int
    state: NodeState


@dataclass(frozen=True)
class TaskRowView:
    """One row of the Futures tables."""

    task_id: str
    name: str
    state: str
    node: str
    #: Seconds it ran (so far, for a running task); None before it started.
    duration: float | None
    #: What it waits for, why it failed, where it runs (``waiting_reason``).
    why: str
    attempt: int


@dataclass(frozen=True)
class FuturesView:
    """The Futures section: counts per ``COUNT_KEYS``, the longest-waiting and the latest tasks."""

    counts: dict[str, int]
    waiting: tuple[TaskRowView, ...]
    latest: tuple[TaskRowView, ...]


@dataclass(frozen=True)
class ActorRowView:
    """One row of the Actors table."""

    actor_id: str
    class_name: str
    name: str
    state: str
    node: str
    restarts: str
    pending_calls: int
    death_cause: str


@dataclass(frozen=True)
class ActorsView:
    """The Actors section: counts per state and the rows (live actors first)."""

    counts: dict[str, int]
    rows: tuple[ActorRowView, ...]


@dataclass(frozen=True)
class PlacementGroupRowView:
    """One row of the Placement groups table."""

    placement_group_id: str
    name: str
    strategy: str
    state: str
    #: Its bundles in short: ``2 x {CPU: 1}, {GPU: 1}``.
    bundles: str
    #: Labels of the nodes holding its bundles.
    nodes: str
    #: Why it waits (PENDING, RESCHEDULING); "" once created.
    why: str


@dataclass(frozen=True)
class PlacementGroupsView:
    """The Placement groups section: counts per state and the rows (waiting ones first)."""

    counts: dict[str, int]
    rows: tuple[PlacementGroupRowView, ...]


@dataclass(frozen=True)
class NodeSeries:
    """Decisions of one node per time bucket, oldest first: tasks it ran where they were
    submitted (local), sent away (spilled), and got from a global scheduler (received)."""

    label: str
    local: tuple[int, ...]
    spilled: tuple[int, ...]
    total_local: int
    total_spilled: int
    received: tuple[int, ...] = ()
    total_received: int = 0


@dataclass(frozen=True)
class SchedulerView:
    """The Scheduler section: per-node decision series and the latest decisions, newest first."""

    bucket_s: float
    window_s: float
    series: tuple[NodeSeries, ...]
    decisions: tuple[SchedulerEvent, ...]


@dataclass(frozen=True)
class DashboardView:
    """Everything the dashboard shows at one moment."""

    #: True once the subscription's first snapshot arrived.
    synced: bool
    nodes: tuple[NodeView, ...]
    futures: FuturesView
    actors: ActorsView
    scheduler: SchedulerView
    #: Changes applied so far (a view with the same version and time draws the same).
    version: int
    placement_groups: PlacementGroupsView = field(default_factory=lambda: PlacementGroupsView({}, ()))
    #: Task runs per worker (see ``widgets.timeline``) and the object stores.
    timeline: TimelineView = field(default_factory=TimelineView.empty)
    objects: ObjectStoreView = field(default_factory=ObjectStoreView.empty)

    def summary(self) -> str:
        """A few plain-text lines: what a terminal or a CI log shows instead of the widget."""
        if not self.synced:
            return "cellray dashboard: connecting…"
        alive = [n for n in self.nodes if n.state.alive]
        cpu_total = sum(n.state.resources_total.get("CPU", 0.0) for n in alive)
        cpu_free = sum(n.state.resources_available.get("CPU", 0.0) for n in alive)
        c = self.futures.counts
        actors = ", ".join(f"{k.lower()} {v}" for k, v in self.actors.counts.items() if v) or "none"
        local = sum(s.total_local for s in self.scheduler.series)
        spilled = sum(s.total_spilled for s in self.scheduler.series)
        received = sum(s.total_received for s in self.scheduler.series)
        lines = [
            (f"Nodes: {len(alive)} alive of {len(self.nodes)}; "
             f"CPU {cpu_total - cpu_free:g}/{cpu_total:g} in use"),
            "Futures: " + ", ".join(f"{k} {c[k]}" for k in COUNT_KEYS),
            f"Actors: {actors}",
            f"Scheduler: {local} local, {spilled} spilled, {received} received",
            (f"Timeline: {self.timeline.bars} task runs on {len(self.timeline.lanes)} worker(s) "
             f"in the last {window_text(self.timeline.window_s)}"),
            self.objects.summary(),
        ]
        groups = ", ".join(f"{k.lower()} {v}" for k, v in self.placement_groups.counts.items() if v)
        if groups:
            lines.append(f"Placement groups: {groups}")
            for g in self.placement_groups.rows[:3]:
                if g.why:
                    lines.append(f"  {g.state.lower()}: {g.name or g.placement_group_id[:8]}: {g.why}")
        for row in self.futures.waiting[:3]:
            lines.append(f"  waiting: {row.name} ({row.task_id[:8]}): {row.why}")
        return "\n".join(lines)
