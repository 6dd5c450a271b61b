"""The Timeline section's pure model: each task attempt as a bar on its worker's lane.

``TimelineModel.apply(task_id, row)`` takes every row of the ``tasks`` table as the
dashboard's subscription delivers it, and ``TimelineModel.view(now, ...)`` returns an
immutable ``TimelineView``: one lane per worker process (``worker_pid``) that ran a task,
lanes grouped by node, a bar per attempt from its start to its end (to ``now`` while it
runs). ``TimelineView.zoom(window_s)`` narrows it to another window without the model, so
the panel's zoom control redraws at once, and ``TimelineView.marks`` says what to draw at a
given width (runs that would overlap on screen drawn as one). No ipywidgets, no clock, no
threads.

How rows become bars
--------------------
- A row with a start time, in RUNNING or a terminal state, is its attempt's run: a bar
  from ``start_time``, open while RUNNING, ending at ``end_time`` once FINISHED, FAILED or
  CANCELLED (a RUNNING row's ``end_time`` is a previous run's and is ignored).
- A retry: the rows of the next attempt (RETRYING, queued again, ...) still carry the
  previous run's start time. The previous bar, if still open, then ends at the time of the
  new attempt's first event in the row's history (its RETRYING) and is marked failed: it
  ended in an error, or its worker or node died.
- A row of a later attempt with the same start time is the same run: a retry cancelled
  before it ran adds no bar.
- A task the GCS drops keeps its bar if the bar ended (the timeline outlives the GCS's
  bounded table), and loses it if it was still open (its end will never come).
- Bounded: at most ``max_bars`` bars; past that the oldest ended bar goes first.

Colours are per function name, in the order functions are first seen (a palette of ten,
then hues from the name's CRC), so a function keeps its colour for the model's life.

Examples
--------
>>> from runtime.state import TaskState
>>> m = TimelineModel()
>>> m.apply("aa", TaskState("aa", "f", None, "FINISHED", "n1", 7, 1.0, 2.0, 4.0, "", 0, None))
>>> v = m.view(now=10.0, window_s=10.0)
>>> [(lane.pid, [(b.name, b.start, b.end) for b in lane.bars]) for lane in v.lanes]
[(7, [('f', 2.0, 4.0)])]
>>> v.span(v.lanes[0].bars[0])
(0.2, 0.2)
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field, replace

from runtime.protocol import states
from runtime.state import TERMINAL_TASK_STATES, TaskState

__all__ = [
    "DEFAULT_WINDOW_S",
    "PALETTE",
    "ZOOMS",
    "TimelineBar",
    "TimelineLane",
    "TimelineMark",
    "TimelineModel",
    "TimelineView",
    "window_text",
]

_Task = states.TaskState
_ENDED = TERMINAL_TASK_STATES
#: The windows the zoom control offers, in seconds, and the one shown first.
ZOOMS: tuple[float, ...] = (30.0, 60.0, 300.0, 900.0)
DEFAULT_WINDOW_S = 300.0
#: Function colours, given in the order functions are first seen. No red (failures are
#: outlined red) and no grey (cancelled bars are greyed).
PALETTE: tuple[str, ...] = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948",
                            "#9c755f", "#ff9da7", "#17becf", "#bcbd22")
#: Function names remembered with their colour; later names take a colour from their CRC.
_MAX_NAMED = 1000


def window_text(window_s: float) -> str:
    """How a window is named: "30 s", "1 min", "15 min"."""
    return f"{window_s / 60:g} min" if window_s >= 60 else f"{window_s:g} s"


def _hashed_colour(name: str) -> str:
    return f"hsl({zlib.crc32(name.encode()) % 360}, 55%, 55%)"


@dataclass(frozen=True)
class TimelineBar:
    """One run of one task attempt."""

    task_id: str
    attempt: int
    name: str
    #: RUNNING, FINISHED, FAILED (also a run that ended and was retried) or CANCELLED.
    state: str
    node_id: str | None
    pid: int | None
    start: float
    #: None while it runs.
    end: float | None
    colour: str
    #: The error's first line, or why it ended ("retried as attempt 1: ...").
    detail: str = ""

    @property
    def failed(self) -> bool:
        """True when the run ended in an error (retried or not)."""
        return self.state == _Task.FAILED

    @property
    def cancelled(self) -> bool:
        return self.state == _Task.CANCELLED

    def duration(self, now: float) -> float:
        """Seconds it ran (so far, while running)."""
        return max((self.end if self.end is not None else now) - self.start, 0.0)


@dataclass(frozen=True)
class TimelineLane:
    """One worker process of one node, with its bars in the window, oldest first."""

    node_id: str | None
    #: The node's label (short id), as the other sections name it.
    node: str
    pid: int | None
    bars: tuple[TimelineBar, ...]


@dataclass(frozen=True)
class TimelineMark:
    """One thing drawn on a lane: a bar, or bars of one function and state that would
    overlap on screen. ``x`` and ``width`` are pixels from the window's start."""

    x: float
    width: float
    bars: tuple[TimelineBar, ...]


@dataclass(frozen=True)
class TimelineView:
    """The Timeline section: lanes with a bar in ``[now - window_s, now]``, grouped by node in
    the Nodes section's order, each node's lanes by pid."""

    now: float
    window_s: float
    lanes: tuple[TimelineLane, ...]
    #: (function, colour) of the functions with a bar in the window, first seen first.
    legend: tuple[tuple[str, str], ...]
    #: Bars the model forgot to stay within its bound (since it started).
    dropped: int = 0
    #: Every bar the model holds, and the node order, so ``zoom`` needs no model.
    kept: tuple[TimelineBar, ...] = field(default=(), repr=False, compare=False)
    node_order: tuple[str, ...] = field(default=(), repr=False, compare=False)
    labels: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

    @property
    def bars(self) -> int:
        """Bars in the window."""
        return sum(len(lane.bars) for lane in self.lanes)

    def x(self, t: float) -> float:
        """Where unix time ``t`` falls, as a fraction of the window (0 its start, 1 now), clamped."""
        return min(max((t - (self.now - self.window_s)) / self.window_s, 0.0), 1.0)

    def span(self, bar: TimelineBar) -> tuple[float, float]:
        """(x, width) of ``bar`` as fractions of the window, cut to the window."""
        x0 = self.x(bar.start)
        return x0, self.x(bar.end if bar.end is not None else self.now) - x0

    def marks(self, lane: TimelineLane, pixels: float, min_px: float = 1.5) -> list[TimelineMark]:
        """What to draw for ``lane`` on a plot ``pixels`` wide: one mark per bar, except that
        bars of one function and state that would overlap on screen (each at least
        ``min_px`` wide) become one mark. So a chart never draws more marks than it has
        pixels, however many short tasks ran."""
        out: list[TimelineMark] = []
        latest: dict[tuple[str, str], int] = {}  # (function, state) -> index of its latest mark
        for bar in lane.bars:
            x, w = self.span(bar)
            x0 = x * pixels
            x1 = max(x0 + w * pixels, x0 + min_px)
            i = latest.get((bar.name, bar.state))
            last = out[i] if i is not None else None
            if last is not None and i is not None and x0 < last.x + last.width - 0.5:  # overlaps it
                out[i] = TimelineMark(last.x, max(last.x + last.width, x1) - last.x, (*last.bars, bar))
            else:
                latest[bar.name, bar.state] = len(out)
                out.append(TimelineMark(x0, x1 - x0, (bar,)))
        return out

    def zoom(self, window_s: float) -> TimelineView:
        """The same bars over another window ending at the same ``now``."""
        return build_view(self.kept, self.now, window_s, self.node_order, dict(self.labels).get,
                          self.dropped)

    @classmethod
    def empty(cls) -> TimelineView:
        return cls(now=0.0, window_s=DEFAULT_WINDOW_S, lanes=(), legend=())


def build_view(bars: Iterable[TimelineBar], now: float, window_s: float, node_order: Sequence[str],
               label: Callable[[str], str | None], dropped: int = 0) -> TimelineView:
    """The lanes of ``bars`` that overlap ``[now - window_s, now]``, nodes in ``node_order``
    (then any other, by id), each node's lanes by pid; ``label(node_id)`` names a node."""
    if window_s <= 0:
        raise ValueError(f"the timeline's window must be > 0 seconds, got {window_s!r}")
    kept = tuple(bars)
    since = now - window_s
    lanes: dict[tuple[str, int], list[TimelineBar]] = {}
    legend: dict[str, str] = {}
    for bar in kept:
        if (bar.end if bar.end is not None else now) < since or bar.start > now:
            continue
        lanes.setdefault((bar.node_id or "", bar.pid or 0), []).append(bar)
        legend.setdefault(bar.name, bar.colour)
    rank = {n: i for i, n in enumerate(node_order)}
    order = sorted(lanes, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1]))
    labels = {n: label(n) or (n[:6] if n else "-") for n in {k[0] for k in order}}
    return TimelineView(
        now=now, window_s=window_s, dropped=dropped, legend=tuple(legend.items()),
        lanes=tuple(TimelineLane(node_id=n or None, node=labels[n], pid=pid or None,
                                 bars=tuple(sorted(lanes[n, pid], key=lambda b: b.start)))
                    for n, pid in order),
        kept=kept, node_order=tuple(node_order), labels=tuple(labels.items()))


class TimelineModel:
    """Task runs as the tasks table shows them, at most ``max_bars`` of them.

    Parameters
    ----------
    max_bars : int
        Bars kept; past that the oldest ended bar is forgotten first.
    """

    def __init__(self, max_bars: int = 2000) -> None:
        if max_bars < 1:
            raise ValueError(f"max_bars must be >= 1, got {max_bars}")
        self.max_bars = max_bars
        #: Bars forgotten to stay within ``max_bars``.
        self.dropped = 0
        #: Bars by (task, start), oldest first; their colour is set in ``view``.
        self._runs: OrderedDict[tuple[str, float], TimelineBar] = OrderedDict()
        self._latest: dict[str, tuple[str, float]] = {}                     # task -> its latest run
        self._colours: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def colour(self, name: str) -> str:
        """The colour of function ``name``: the next palette colour the first time it is seen."""
        colour = self._colours.get(name)
        if colour is None:
            n = len(self._colours)
            colour = PALETTE[n] if n < len(PALETTE) else _hashed_colour(name)
            if n < _MAX_NAMED:
                self._colours[name] = colour
        return colour

    def apply(self, task_id: str, row: TaskState | None) -> None:
        """Merge the latest row of ``task_id`` (None: the GCS dropped the task)."""
        last_key = self._latest.get(task_id)
        last = self._runs.get(last_key) if last_key is not None else None
        if row is None:
            self._latest.pop(task_id, None)
            if last is not None and last.end is None and last_key is not None:
                del self._runs[last_key]  # its end will never come
            return
        runs = row.start_time is not None and (row.state == _Task.RUNNING or row.state in _ENDED)
        same = last is not None and last.start == row.start_time
        if last is not None and last_key is not None and last.end is None and not (same and runs) and (
                runs or row.attempt > last.attempt):  # another run began, or another attempt
            self._retried(last_key, row)
        if not runs or row.start_time is None:
            return
        if same and last is not None and last_key is not None:
            if last.end is not None and row.attempt > last.attempt:
                return  # a later attempt that never ran (cancelled while queued, say)
            key = last_key
        else:
            key = (task_id, row.start_time)
            self._runs[key] = TimelineBar(task_id, row.attempt, row.name, row.state, row.node_id,
                                          row.worker_pid, row.start_time, None, "")
            self._latest[task_id] = key
            self.colour(row.name)
            self._bound()
        run = self._runs.get(key)
        if run is None:
            return  # forgotten at once to stay within max_bars
        end = (None if row.state == _Task.RUNNING
               else max(row.end_time if row.end_time is not None else run.start, run.start))
        self._runs[key] = replace(run, name=row.name or run.name, state=row.state, detail=row.detail,
                                  node_id=row.node_id or run.node_id, pid=row.worker_pid or run.pid,
                                  end=end)

    def _retried(self, key: tuple[str, float], row: TaskState) -> None:
        # The run ended before a later attempt began: at that attempt's first event.
        run = self._runs[key]
        later = [e.time for e in row.history if e.attempt > run.attempt and e.time is not None]
        fallback = row.start_time if row.start_time is not None and row.start_time > run.start else run.start
        self._runs[key] = replace(
            run, end=max(min(later) if later else fallback, run.start), state=_Task.FAILED,
            detail=f"retried as attempt {row.attempt}" + (f": {row.detail}" if row.detail else ""))

    def _bound(self) -> None:
        while len(self._runs) > self.max_bars:
            victim = next((k for k, r in self._runs.items() if r.end is not None), None)
            if victim is None:
                victim = next(iter(self._runs))
            run = self._runs.pop(victim)
            if self._latest.get(run.task_id) == victim:
                del self._latest[run.task_id]
            self.dropped += 1

    def keep_open_only(self, task_ids: Container[str]) -> None:
        """Forget the open bars of tasks not in ``task_ids`` (after a fresh snapshot: tasks
        dropped while the subscription was down never send a deletion)."""
        for tid in [t for t in self._latest if t not in task_ids]:
            key = self._latest.pop(tid)
            if self._runs[key].end is None:
                del self._runs[key]

    def view(self, now: float, window_s: float = DEFAULT_WINDOW_S, node_order: Sequence[str] = (),
             label: Callable[[str], str | None] = lambda n: None) -> TimelineView:
        """The bars over ``[now - window_s, now]``; ``node_order`` and ``label`` as the Nodes
        section orders and names nodes."""
        bars = [replace(r, colour=self._colours.get(r.name) or _hashed_colour(r.name))
                for r in self._runs.values()]
        return build_view(bars, now, window_s, node_order, label, self.dropped)
