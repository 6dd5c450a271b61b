"""The dashboard's pure model: ``runtime.state.Change`` objects in, views out.

Nothing here imports ipywidgets, starts a thread or reads the clock: ``ClusterModel.apply``
merges one change of a ``runtime.state.subscribe`` stream (nodes, tasks, actors, events,
placement_groups and objects tables), and ``ClusterModel.view(now)`` returns an immutable
``DashboardView`` (see ``widgets.views``) that the widgets draw. The timeline's task runs
are kept by ``widgets.timeline``, the object stores' view is built by
``widgets.objects_view``. The dashboard feeds the model from the subscription's thread and
reads views from its refresher thread, under one lock that it owns (the model itself is
not thread-safe).

Counting rules
--------------
- *pending*, *sent ahead* and *running* count the tasks the GCS holds now: *running* only
  those executing in a worker, *sent ahead* those given to a busy worker to start after its
  current task (pipelining), *pending* every other that is not over; *finished*, *failed* and
  *cancelled* count every task seen reaching that state since the model started, so they
  keep growing after the GCS drops old finished tasks from its bounded table.
- A *local* scheduling decision is a task attempt seen running (a row with a start time
  in RUNNING or a later state), counted once per attempt on the node where it ran, at the
  time it started, unless that attempt was spilled (a SPILLED row or event). A *spilled*
  decision is a SPILLED row of the ``events`` table, counted on the node that spilled
  it; a *received* one is a SCHEDULED row (a global scheduler placed a spilled task
  there), counted on the node that got it. All go into time buckets
  (``DecisionSeries``) kept for ``window_s`` seconds. Actor method calls are not
  scheduling decisions (they go straight to their actor); actor creation is.

Examples
--------
>>> from runtime.state import Change, TaskState
>>> m = ClusterModel()
>>> t = TaskState("aa", "f", None, "RUNNING", "n1", 7, 1.0, 1.5, None, "", 0, None)
>>> m.apply(Change("tasks", "aa", t))
>>> m.view(now=2.0).futures.counts["running"]
1
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from typing import Any

from runtime.protocol import states
from runtime.state import (
    ActorState,
    Change,
    NodeState,
    ObjectState,
    PlacementGroupState,
    SchedulerEvent,
    TaskState,
)
from widgets.decisions import DecisionSeries
from widgets.objects_view import object_store_view
from widgets.timeline import DEFAULT_WINDOW_S, TimelineModel
from widgets.views import (
    COUNT_KEYS,
    ActorRowView,
    ActorsView,
    DashboardView,
    FuturesView,
    NodeSeries,
    NodeView,
    PlacementGroupRowView,
    PlacementGroupsView,
    SchedulerView,
    TaskRowView,
)

__all__ = [
    "ACTOR_STATES",
    "GROUP_STATES",
    "ClusterModel",
    "DecisionSeries",
    "bundles_text",
    "short_id",
    "task_category",
    "waiting_reason",
]

_Task = states.TaskState
#: The Futures counter of each terminal task state (its name in lower case).
_TERMINAL = {s: s.lower() for s in states.TERMINAL_TASK_STATES}
#: Scheduler decisions listed under "latest scheduler events".
_DECISIONS = frozenset({_Task.SPILLED, _Task.SCHEDULED, _Task.INFEASIBLE})
#: The counters of tasks not over: they count what the GCS holds now.
_LIVE = frozenset({"pending", "sent ahead", "running"})
#: The actor states, in the order the Actors section counts them.
ACTOR_STATES: tuple[str, ...] = tuple(states.ActorState)
#: The placement group states, in the order the section counts (and lists) them.
GROUP_STATES: tuple[str, ...] = ("PENDING", "RESCHEDULING", "CREATED", "REMOVED")


def short_id(hex_id: str | None, n: int = 6) -> str:
    """The first ``n`` hex digits of an id, "-" for None (how the dashboard names nodes)."""
    return hex_id[:n] if hex_id else "-"


def task_category(state: str) -> str:
    """The Futures counter a task state belongs to: pending, sent ahead, running, finished,
    failed, cancelled.

    Every state that is neither RUNNING, SENT_AHEAD nor terminal is pending (SUBMITTED,
    QUEUED, SCHEDULED, SPILLED, RETRYING, INFEASIBLE, and any state a newer runtime adds).
    """
    if state == _Task.RUNNING:
        return "running"
    if state == _Task.SENT_AHEAD:
        return "sent ahead"
    return _TERMINAL.get(state, "pending")


def _secs(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.0f} min"


def waiting_reason(task: TaskState, now: float, node_label: str = "") -> str:
    """Why a task is where it is, in words: what a pending task waits for, and so on.

    >>> t = TaskState("aa", "f", None, "SUBMITTED", None, None, 10.0, None, None, "", 0, None)
    >>> waiting_reason(t, now=12.5)
    'queued for 2.5 s: waiting for its inputs, a free worker or resources'
    """
    state, detail = task.state, task.detail.strip()
    waited = f" for {_secs(max(now - task.submit_time, 0.0))}" if task.submit_time else ""
    if state == _Task.INFEASIBLE:
        return detail or "infeasible: no node has the resources it needs"
    if state in (_Task.SUBMITTED, _Task.QUEUED):
        return f"queued{waited}: " + (detail or "waiting for its inputs, a free worker or resources")
    if state == _Task.SCHEDULED:
        where = f" on node {node_label}" if node_label else ""
        return f"scheduled{where}{waited}, waiting for a worker" + (f": {detail}" if detail else "")
    if state == _Task.SPILLED:
        return "spilled to another node" + (f": {detail}" if detail else "")
    if state == _Task.RETRYING:
        return f"retrying (attempt {task.attempt + 1})" + (f" after: {detail}" if detail else "")
    if state == _Task.RUNNING:
        return f"running in worker pid {task.worker_pid}" if task.worker_pid else "running"
    if state == _Task.SENT_AHEAD:
        where = f"worker pid {task.worker_pid}" if task.worker_pid else "a busy worker"
        return f"sent ahead to {where}: it starts there when the task running now ends"
    if state == _Task.CANCELLED:
        return detail or "cancelled"
    return detail


# ---- the model -----------------------------------------------------------------------------


class ClusterModel:
    """The cluster as the dashboard knows it, built from subscription changes.

    Parameters
    ----------
    window_s, bucket_s : float
        How far back the decision chart reaches, and the width of one bar.
    max_rows : int
        Rows of the latest-tasks, waiting-tasks, scheduler-events and largest-objects tables.
    timeline_window_s : float
        The window of the timeline's view (the panel zooms it to others).
    max_bars : int
        Task runs the timeline keeps (the oldest ended ones go first).
    """

    def __init__(self, *, window_s: float = 300.0, bucket_s: float = 5.0, max_rows: int = 10,
                 timeline_window_s: float = DEFAULT_WINDOW_S, max_bars: int = 2000) -> None:
        if window_s <= 0 or bucket_s <= 0 or window_s < bucket_s:
            raise ValueError(f"need 0 < bucket_s <= window_s, got bucket_s={bucket_s}, window_s={window_s}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if timeline_window_s <= 0:
            raise ValueError(f"timeline_window_s must be > 0 seconds, got {timeline_window_s!r}")
        self.max_rows = max_rows
        self.timeline_window_s = timeline_window_s
        #: Task runs, per worker: the Timeline section's model.
        self.timeline = TimelineModel(max_bars=max_bars)
        #: This driver's client id: the objects it owns show as owned by "this kernel".
        self.own_id: str | None = None
        #: Rows of the tables, by hex key, as of the latest change.
        self.nodes: dict[str, NodeState] = {}
        self.tasks: dict[str, TaskState] = {}
        self.actors: dict[str, ActorState] = {}
        self.placement_groups: dict[str, PlacementGroupState] = {}
        self.objects: dict[str, ObjectState] = {}
        self._keyed: dict[str, tuple[dict[str, Any], type]] = {
            "nodes": (self.nodes, NodeState), "actors": (self.actors, ActorState),
            "placement_groups": (self.placement_groups, PlacementGroupState),
            "objects": (self.objects, ObjectState)}
        #: True once the first snapshot arrived (and again after each reset's snapshot).
        self.synced = False
        #: Times the subscription started over with a fresh snapshot.
        self.resets = 0
        #: Changes applied so far.
        self.version = 0
        self.series = DecisionSeries(bucket_s=bucket_s, window_s=window_s)
        #: Pending and running tasks held now, and terminal ones seen since the start.
        self.counts: Counter[str] = Counter(dict.fromkeys(COUNT_KEYS, 0))
        self._category: dict[str, str] = {}      # task id -> category of its current row
        self._credited: dict[str, str] = {}      # task id -> terminal category counted for it
        self._ran: dict[str, set[int]] = {}      # task id -> attempts counted as local decisions
        self._spilled: OrderedDict[str, set[int]] = OrderedDict()  # task id -> attempts spilled
        self._pending: OrderedDict[str, None] = OrderedDict()   # oldest first
        self._infeasible: OrderedDict[str, None] = OrderedDict()  # oldest first
        self._recent: OrderedDict[str, None] = OrderedDict()    # least recently changed first
        self._decisions: deque[SchedulerEvent] = deque(maxlen=max(50, max_rows))
        self._seen_events: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._resetting = False

    # ---- input ----

    def apply(self, change: Change) -> None:
        """Merge one change (a row, a deletion, or a snapshot_done / reset marker)."""
        self.version += 1
        if change.reset:
            self._reset()
            return
        if change.snapshot_done:
            self.synced = True
            if self._resetting:
                self._forget_missing()
            return
        table, key, value = change.table, change.key, change.value
        if table == "tasks":
            self._apply_task(key, value if isinstance(value, TaskState) else None)
        elif table in self._keyed:  # rows kept as they come, by key
            rows, kind = self._keyed[table]
            if isinstance(value, kind):
                rows[key] = value
            else:
                rows.pop(key, None)
        elif table == "events" and isinstance(value, SchedulerEvent):
            self._apply_event(value)

    def apply_all(self, changes: Iterable[Change]) -> None:
        """``apply`` each change in order."""
        for c in changes:
            self.apply(c)

    def _reset(self) -> None:
        # The subscription starts over: a fresh snapshot follows. Forget the rows (they
        # come back with it) but keep what was counted, so nothing is counted twice.
        self.resets += 1
        self._resetting = True
        self.synced = False
        for rows, _ in self._keyed.values():
            rows.clear()
        self.tasks.clear()
        for cat in self._category.values():
            if cat in _LIVE:
                self.counts[cat] -= 1
        self._category.clear()
        self._pending.clear()
        self._infeasible.clear()
        self._recent.clear()

    def _forget_missing(self) -> None:
        # Tasks dropped while the subscription was down never send a deletion.
        self._resetting = False
        for d in (self._credited, self._ran, self._spilled):
            for tid in [t for t in d if t not in self.tasks]:
                del d[tid]
        self.timeline.keep_open_only(self.tasks)

    def _apply_task(self, tid: str, row: TaskState | None) -> None:
        self.timeline.apply(tid, row)
        old = self._category.pop(tid, None)
        if old in _LIVE:
            self.counts[old] -= 1
        if row is None:  # the GCS dropped the task: it stays counted, its row goes
            self.tasks.pop(tid, None)
            self._pending.pop(tid, None)
            self._infeasible.pop(tid, None)
            self._recent.pop(tid, None)
            self._credited.pop(tid, None)
            self._ran.pop(tid, None)
            self._spilled.pop(tid, None)
            return
        self.tasks[tid] = row
        cat = task_category(row.state)
        self._category[tid] = cat
        credited = self._credited.get(tid)
        if cat in _LIVE:
            self.counts[cat] += 1
            if credited is not None:  # ran again (a lost result rebuilt from lineage)
                self.counts[credited] -= 1
                del self._credited[tid]
        elif credited != cat:
            if credited is not None:
                self.counts[credited] -= 1
            self.counts[cat] += 1
            self._credited[tid] = cat
        if cat == "pending":
            if tid not in self._pending:
                self._pending[tid] = None
        else:
            self._pending.pop(tid, None)
        if row.state == _Task.INFEASIBLE:
            self._infeasible.setdefault(tid, None)
        else:
            self._infeasible.pop(tid, None)
        self._recent[tid] = None
        self._recent.move_to_end(tid)
        while len(self._recent) > 4 * self.max_rows:
            self._recent.popitem(last=False)
        self._count_runs(tid, row)

    def _count_runs(self, tid: str, row: TaskState) -> None:
        if row.actor_id is not None and not row.name.endswith(".__init__"):
            return  # an actor method call goes straight to its actor: no scheduling decision
        if row.state == _Task.SPILLED:
            self._note_spilled(tid, row.attempt)
            return
        if row.start_time is None or not row.node_id or task_category(row.state) in ("pending", "sent ahead"):
            return
        ran = self._ran.setdefault(tid, set())
        if row.attempt in ran:
            return
        ran.add(row.attempt)
        if row.attempt not in self._spilled.get(tid, ()):
            self.series.add(row.node_id, row.start_time, local=1)

    def _note_spilled(self, tid: str, attempt: int) -> None:
        self._spilled.setdefault(tid, set()).add(attempt)
        self._spilled.move_to_end(tid)
        while len(self._spilled) > 100_000:  # spills of tasks the GCS never showed us
            self._spilled.popitem(last=False)

    def _apply_event(self, ev: SchedulerEvent) -> None:
        if ev.state not in _DECISIONS:
            return
        key = (ev.task_id, ev.attempt, ev.state, ev.node_id, ev.time)
        if key in self._seen_events:  # the same event again, in a fresh snapshot
            return
        self._seen_events[key] = None
        while len(self._seen_events) > 20_000:
            self._seen_events.popitem(last=False)
        if ev.state != _Task.SCHEDULED:  # a placement repeats its SPILLED event's target
            self._decisions.append(ev)
        if ev.state == _Task.SPILLED:
            self._note_spilled(ev.task_id, ev.attempt)
            if ev.node_id and ev.time is not None:
                self.series.add(ev.node_id, ev.time, spilled=1)
        elif ev.state == _Task.SCHEDULED and ev.node_id and ev.time is not None:
            self.series.add(ev.node_id, ev.time, received=1)

    # ---- output ----

    def node_label(self, node_id: str | None) -> str:
        """How the dashboard names a node: its short id."""
        return short_id(node_id)

    def _task_row(self, t: TaskState, now: float) -> TaskRowView:
        if t.start_time is None:
            duration = None
        elif t.end_time is not None:
            duration = max(t.end_time - t.start_time, 0.0)
        elif t.state == _Task.RUNNING:
            duration = max(now - t.start_time, 0.0)
        else:
            duration = None
        node = self.node_label(t.node_id)
        return TaskRowView(task_id=t.task_id, name=t.name, state=t.state, node=node,
                           duration=duration, why=waiting_reason(t, now, node), attempt=t.attempt)

    def _waiting(self, now: float) -> tuple[TaskRowView, ...]:
        # Infeasible tasks first (they wait for a node that may never come), then the
        # tasks that have waited longest.
        n = self.max_rows
        rows: list[str] = []
        for tid in self._infeasible:
            if len(rows) >= n:
                break
            rows.append(tid)
        for tid in self._pending:
            if len(rows) >= n:
                break
            if tid not in self._infeasible:
                rows.append(tid)
        return tuple(self._task_row(self.tasks[tid], now) for tid in rows)

    def view(self, now: float) -> DashboardView:
        """An immutable picture of the model at unix time ``now`` (for durations and the chart)."""
        nodes = sorted(self.nodes.values(), key=lambda n: (n.start_time or 0.0, n.node_id))
        node_views = tuple(NodeView(self.node_label(n.node_id), i + 1, n) for i, n in enumerate(nodes))
        latest = tuple(self._task_row(self.tasks[tid], now)
                       for tid in reversed(list(self._recent)[-self.max_rows:]))
        futures = FuturesView(counts={k: self.counts[k] for k in COUNT_KEYS},
                              waiting=self._waiting(now), latest=latest)
        actor_counts = Counter(a.state for a in self.actors.values())
        order = {s: i for i, s in enumerate(ACTOR_STATES)}
        actors = sorted(self.actors.values(),
                        key=lambda a: (a.state == states.ActorState.DEAD, order.get(a.state, 9),
                                       a.start_time or 0.0))
        actor_rows = tuple(ActorRowView(
            actor_id=a.actor_id, class_name=a.class_name, name=a.name or "", state=a.state,
            node=self.node_label(a.node_id),
            restarts=f"{a.num_restarts}/{'∞' if a.max_restarts < 0 else a.max_restarts}",
            pending_calls=a.pending_calls, death_cause=a.death_cause) for a in actors[:4 * self.max_rows])
        series_nodes = [n.node_id for n in nodes] + [n for n in self.series.nodes() if n not in self.nodes]
        series = []
        for node_id in series_nodes:
            local, spilled, received = self.series.series(node_id, now)
            tl, ts, tr = self.series.totals(node_id)
            series.append(NodeSeries(self.node_label(node_id), local, spilled, tl, ts, received, tr))
        decisions = tuple(reversed(list(self._decisions)[-self.max_rows:]))
        return DashboardView(
            placement_groups=self._groups_view(),
            timeline=self.timeline.view(now, self.timeline_window_s, [n.node_id for n in nodes],
                                        self.node_label),
            objects=object_store_view(self.objects.values(), nodes, label=self.node_label,
                                      task_name=self._task_name, own_id=self.own_id,
                                      limit=self.max_rows),
            synced=self.synced, nodes=node_views, futures=futures,
            actors=ActorsView(counts={s: actor_counts.get(s, 0) for s in
                                      (*ACTOR_STATES, *sorted(set(actor_counts) - set(ACTOR_STATES)))},
                              rows=actor_rows),
            scheduler=SchedulerView(bucket_s=self.series.bucket_s, window_s=self.series.window_s,
                                    series=tuple(series), decisions=decisions),
            version=self.version)

    def _task_name(self, task_id: str) -> str | None:
        row = self.tasks.get(task_id)
        return row.name if row is not None else None

    def _groups_view(self) -> PlacementGroupsView:
        counts = Counter(g.state for g in self.placement_groups.values())
        order = {s: i for i, s in enumerate(GROUP_STATES)}
        groups = sorted(self.placement_groups.values(),
                        key=lambda g: (order.get(g.state, 9), -(g.create_time or 0.0)))
        rows = tuple(PlacementGroupRowView(
            placement_group_id=g.placement_group_id, name=g.name or "", strategy=g.strategy, state=g.state,
            bundles=bundles_text([b.resources for b in g.bundles]),
            nodes=", ".join(self.node_label(n) for n in g.nodes), why=g.why)
            for g in groups[:2 * self.max_rows])
        return PlacementGroupsView(
            counts={s: counts.get(s, 0) for s in (*GROUP_STATES, *sorted(set(counts) - set(GROUP_STATES)))},
            rows=rows)


def bundles_text(bundles: list[dict[str, float]]) -> str:
    """Bundles in short, equal ones counted: ``2 x {CPU: 1}, {GPU: 1}``."""
    runs: list[list[Any]] = []
    for b in bundles:
        text = "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(b.items())) + "}"
        if runs and runs[-1][0] == text:
            runs[-1][1] += 1
        else:
            runs.append([text, 1])
    return ", ".join(text if n == 1 else f"{n} x {text}" for text, n in runs)
