"""One cell's tasks and what is known of them, for its progress strip (``kernel_ext.strip``).

Pure: events in (a task submitted, a row of the GCS tasks table, results found ready),
counts and decisions out; times are passed in. ``next_step`` says what to do with the
cell's strip now. The counts are kept up to date as the events come, so looking at a cell
of 100 000 tasks four times a second costs nothing.

A task is over when its row is terminal (FINISHED, FAILED, CANCELLED) or its result is
ready here. A ready task counts as done until its row says otherwise: rows lag their tasks
by a batch of events, so a cell waits ``SETTLE_S`` for them before its final line.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from runtime.protocol.states import TERMINAL_TASK_STATES
from widgets.cell_strip import StripCounts, kind_of

#: A strip appears once a task of the cell has been unfinished this long (as rt.get's bar).
SHOW_AFTER_S = 1.0
#: How long a task whose result is here may wait for its final row before it counts as done.
SETTLE_S = 2.0

Step = Literal["wait", "sync", "show", "update", "finish", "forget"]


@dataclass(frozen=True)
class TaskRow:
    """What the GCS last said of a task: its state, and when it ended (unix seconds)."""

    state: str
    end_time: float | None = None


@dataclass
class _Task:
    submitted: float
    ref: weakref.ReferenceType[Any] | None
    ready_at: float | None = None
    row: TaskRow | None = None
    kind: str = "pending"
    #: Over because its result is here, its row not terminal yet.
    lagging: bool = False
    #: Its terminal row came (final: no later row changes how it ended).
    final: bool = False


class CellWork:
    """The tasks one cell started: ``add``, ``saw_row`` and ``mark_ready`` feed it."""

    def __init__(self) -> None:
        #: The cell's tasks by hex task id, in submission order.
        self.tasks: dict[str, _Task] = {}
        #: Monotonic and wall-clock time of the first task.
        self.started = 0.0
        self.started_wall = 0.0
        #: When every task was first seen over; None while one is not.
        self.over_at: float | None = None
        self._order: list[_Task] = []
        self._oldest_open = 0  # every task before this index in _order is over
        self._n = dict.fromkeys(("done", "failed", "cancelled", "running", "pending"), 0)
        self._lagging = 0
        self._last_ready = 0.0
        self._ends: list[float] = []

    # ---- events ----

    def add(self, task_id: str, ref: Any, now: float, wall: float) -> None:
        """The cell submitted ``task_id``; ``ref`` is its first result (held weakly) or None."""
        if task_id in self.tasks:
            return
        if not self.tasks:
            self.started, self.started_wall = now, wall
        task = _Task(now, weakref.ref(ref) if ref is not None else None)
        self.tasks[task_id] = task
        self._order.append(task)
        self._n["pending"] += 1
        self.over_at = None

    def saw_row(self, task_id: str, row: TaskRow) -> None:
        """The GCS row of ``task_id`` changed (rows of other cells' tasks are ignored)."""
        task = self.tasks.get(task_id)
        if task is None or task.final:
            return
        task.row = row
        if row.state in TERMINAL_TASK_STATES:
            task.final = True
            if row.end_time:
                self._ends.append(row.end_time)
        self._classify(task)

    def mark_ready(self, task_ids: Iterable[str], now: float) -> None:
        """The results of ``task_ids`` are here (ids of other cells' tasks are ignored)."""
        for tid in task_ids:
            task = self.tasks.get(tid)
            if task is not None and task.ready_at is None:
                task.ready_at = now
                self._last_ready = max(self._last_ready, now)
                self._classify(task)

    def _classify(self, task: _Task) -> None:
        if task.final:
            kind, lagging = kind_of(task.row.state if task.row else None), False
        elif task.ready_at is not None:
            kind, lagging = "done", True
        else:
            kind, lagging = kind_of(task.row.state if task.row else None), False
        self._n[task.kind] -= 1
        self._n[kind] += 1
        self._lagging += lagging - task.lagging
        task.kind, task.lagging = kind, lagging

    # ---- what is known ----

    def covers(self, task_ids: Sequence[str]) -> bool:
        """Whether every one of ``task_ids`` (at least one) is a task of this cell."""
        return bool(task_ids) and all(tid in self.tasks for tid in task_ids)

    def waiting_refs(self) -> list[Any]:
        """The refs still held of tasks whose results are not known to be here."""
        refs = []
        for task in self._order:
            if task.ready_at is None and not task.final and task.ref is not None \
                    and (ref := task.ref()) is not None:
                refs.append(ref)
        return refs

    def counts(self) -> StripCounts:
        return StripCounts(**self._n)

    def observe(self, now: float) -> StripCounts:
        """The counts now; notes when every task is first seen over."""
        counts = self.counts()
        if counts.unfinished:
            self.over_at = None
        elif self.over_at is None:
            self.over_at = now
        return counts

    def due(self, now: float, delay: float) -> bool:
        """Whether a task not over yet was submitted ``delay`` seconds ago or earlier."""
        order = self._order
        i = self._oldest_open
        while i < len(order) and order[i].kind not in ("running", "pending"):
            i += 1  # over is for good: never looked at again
        self._oldest_open = i
        return i < len(order) and now - order[i].submitted >= delay

    def settled(self, now: float) -> bool:
        """Over, and sure how: every row is terminal, or ``SETTLE_S`` passed since the last
        result whose row has not come yet."""
        if self.over_at is None:
            return False
        return not self._lagging or now - self._last_ready >= SETTLE_S

    def elapsed(self, now: float) -> float:
        """Seconds from the first submission to the end of the last task: by the rows' end
        times when all have one (and they agree with this clock), else as observed."""
        observed = max((self.over_at if self.over_at is not None else now) - self.started, 0.0)
        if self._ends and len(self._ends) == len(self.tasks):
            by_rows = max(self._ends) - self.started_wall
            if 0.0 <= by_rows <= observed:
                return by_rows
        return observed


def next_step(work: CellWork, now: float, *, ended: bool, shown: bool, holding_off: bool,
              synced: bool, delay: float = SHOW_AFTER_S) -> Step:
    """What to do with a cell's strip now.

    "forget" the cell (it ended, every task over, no strip shown); "wait"; "sync" (a strip
    is due but the task rows are not in yet: subscribe first); "show" it; "update" it;
    "finish" it (the cell ended and its tasks are over, and settled). ``holding_off``: a
    get's bar is up in the cell, so the strip waits (one bar per cell).
    """
    counts = work.observe(now)
    if shown:
        return "finish" if ended and work.settled(now) else "update"
    if not counts.unfinished:
        return "forget" if ended else "wait"
    if holding_off or not work.due(now, delay):
        return "wait"
    return "show" if synced else "sync"
