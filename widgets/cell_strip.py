"""The progress strip under a notebook cell: ``12 tasks: 5 done · 4 running · 3 pending · 0 failed``.

A thin segmented bar (done, failed, cancelled, running, pending) and one line of text.
While the tasks run the line has a fixed shape, so it does not jump about; once they are
over it keeps only what happened, with the time they took::

    12 tasks: 5 done · 4 running · 3 pending · 0 failed
    12 tasks: 11 done · 1 failed (in 3.2 s)
    12 tasks: 5 done · 7 unfinished (cluster disconnected after 3.2 s)

``StripCounts``, ``strip_line`` and ``strip_html`` are pure (counts in, text out);
``CellStrip`` is the live widget that shows them. Which cells get a strip, and what feeds
it, is the notebook extension's business (``kernel_ext.strip``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from runtime.protocol.states import TaskState
from widgets._close import close_tree

__all__ = ["CellStrip", "StripCounts", "kind_of", "strip_html", "strip_line"]

#: The bar's segments, left to right, and their colours.
_SEGMENTS = (("done", "#16a34a"), ("failed", "#dc2626"), ("cancelled", "#9ca3af"),
             ("running", "#3b82f6"), ("pending", "#d1d5db"))


@dataclass(frozen=True)
class StripCounts:
    """How many of a cell's tasks are in each state.

    Attributes
    ----------
    done, failed, cancelled : int
        Tasks that are over: finished, failed (their error is final), cancelled.
    running : int
        Tasks running in a worker.
    pending : int
        Tasks not running yet (queued, waiting for inputs or resources, being retried, or
        not heard of yet).
    """

    done: int = 0
    failed: int = 0
    cancelled: int = 0
    running: int = 0
    pending: int = 0

    @property
    def total(self) -> int:
        return self.done + self.failed + self.cancelled + self.running + self.pending

    @property
    def unfinished(self) -> int:
        """Tasks not over yet (running or pending)."""
        return self.running + self.pending

    @classmethod
    def of(cls, states: Iterable[str | None]) -> StripCounts:
        """Count task states (``TaskState`` values; None for a task not heard of yet), as
        ``kind_of`` sorts them."""
        n = dict.fromkeys(("done", "failed", "cancelled", "running", "pending"), 0)
        for s in states:
            n[kind_of(s)] += 1
        return cls(**n)


#: The task states that are not "pending", and what they count as.
_KINDS: dict[str, str] = {TaskState.FINISHED: "done", TaskState.FAILED: "failed",
                          TaskState.CANCELLED: "cancelled", TaskState.RUNNING: "running"}


def kind_of(state: str | None) -> str:
    """What a task in ``state`` counts as: FINISHED "done", FAILED "failed", CANCELLED
    "cancelled", RUNNING "running"; any other state (SUBMITTED, QUEUED, SENT_AHEAD,
    RETRYING, INFEASIBLE, ...) and None (not heard of yet) "pending"."""
    return _KINDS.get(state, "pending") if state is not None else "pending"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def strip_line(counts: StripCounts, *, elapsed: float | None = None, ended: str = "") -> str:
    """The strip's text: live while ``elapsed`` is None, the final line once it is given.

    Parameters
    ----------
    counts : StripCounts
        The cell's tasks.
    elapsed : float, optional
        Seconds the tasks took; given once they are over (or no longer watched).
    ended : str
        Why the strip stopped before the tasks were over ("cluster disconnected"); the
        final line then says it in place of "in".

    Examples
    --------
    >>> strip_line(StripCounts(done=5, running=4, pending=3))
    '12 tasks: 5 done · 4 running · 3 pending · 0 failed'
    >>> strip_line(StripCounts(done=11, failed=1), elapsed=3.21)
    '12 tasks: 11 done · 1 failed (in 3.2 s)'
    """
    noun = "task" if counts.total == 1 else "tasks"
    head = f"{counts.total} {noun}: "
    if elapsed is None:
        parts = [f"{counts.done} done", f"{counts.running} running", f"{counts.pending} pending",
                 f"{counts.failed} failed"]
        if counts.cancelled:
            parts.append(f"{counts.cancelled} cancelled")
        return head + " · ".join(parts)
    parts = [f"{counts.done} done"]
    parts += [f"{n} {what}" for n, what in ((counts.failed, "failed"), (counts.cancelled, "cancelled"),
                                            (counts.unfinished, "unfinished")) if n]
    when = f"{ended} after {_duration(elapsed)}" if ended else f"in {_duration(elapsed)}"
    return f"{head}{' · '.join(parts)} ({when})"


def strip_html(counts: StripCounts, line: str) -> str:
    """The strip in HTML: a thin bar, one segment per state (widths in proportion), and ``line``."""
    segments = "".join(
        f'<span title="{n} {name}" style="flex:{n} 0 0;background:{colour}"></span>'
        for name, colour in _SEGMENTS if (n := getattr(counts, name)))
    return ('<div class="cellray-strip" style="display:flex;align-items:center;gap:8px;'
            'font-size:12px;line-height:1.5;color:var(--jp-ui-font-color1,#374151)">'
            '<div style="display:flex;width:160px;height:4px;border-radius:2px;overflow:hidden;'
            f'background:#f3f4f6">{segments}</div><span>{html.escape(line)}</span></div>')


class CellStrip(w.HTML):
    """The live strip: ``show(counts)`` while the tasks run, ``show(counts, elapsed=...)`` at the end.

    Attributes
    ----------
    counts : StripCounts
        What it shows.
    line : str
        Its text (also its ``text/plain``, for static renderers and logs).
    """

    def __init__(self, counts: StripCounts | None = None) -> None:
        self.counts = counts or StripCounts()
        self.line = strip_line(self.counts)
        super().__init__(value=strip_html(self.counts, self.line))
        self.add_class("cellray-strip")

    def show(self, counts: StripCounts, *, elapsed: float | None = None, ended: str = "") -> bool:
        """Show ``counts`` (see ``strip_line``); False when the text did not change (nothing sent)."""
        line = strip_line(counts, elapsed=elapsed, ended=ended)
        if line == self.line:
            return False
        self.counts, self.line = counts, line
        self.value = strip_html(counts, line)
        return True

    def static(self) -> dict[str, str]:
        """What takes the live widget's place once it is closed: HTML and text, no comm."""
        return {"text/html": self._repr_html_(), "text/plain": self.line}

    def close(self) -> None:
        close_tree(self)

    def _repr_html_(self) -> str:
        return strip_html(self.counts, self.line)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = self.line
        return bundle

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.line)

    def __repr__(self) -> str:
        return f"<CellStrip {self.line}>"
