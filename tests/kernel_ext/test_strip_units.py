"""The pure part of the progress strips: what one cell's tasks count as, and what to do next.

Times are passed in (no clock, no threads, no cluster); task rows are ``TaskRow`` values
as the GCS subscription would deliver them.
"""

from __future__ import annotations

import gc

import pytest

from kernel_ext.cell_work import SETTLE_S, CellWork, TaskRow, next_step
from kernel_ext.strip import env_allows
from widgets.cell_strip import StripCounts


class Ref:
    """Stands for an ObjectRef: the strip holds result refs weakly."""


def work_of(n: int, *, at: float = 100.0, refs: list[Ref] | None = None) -> CellWork:
    work = CellWork()
    for i in range(n):
        work.add(f"t{i}", refs[i] if refs else None, at, 1000.0 + at)
    return work


def rows(work: CellWork, **states: str | TaskRow) -> CellWork:
    for tid, row in states.items():
        work.saw_row(tid, row if isinstance(row, TaskRow) else TaskRow(row))
    return work


def test_tasks_not_heard_of_are_pending_and_rows_tell_the_rest() -> None:
    work = work_of(5)
    assert work.counts() == StripCounts(pending=5)
    rows(work, t0="FINISHED", t1="FAILED", t2="RUNNING", t3="QUEUED", other="RUNNING")
    assert work.counts() == StripCounts(done=1, failed=1, running=1, pending=2)
    rows(work, t2="RETRYING", t3="RUNNING")
    assert work.counts() == StripCounts(done=1, failed=1, running=1, pending=2)


def test_a_terminal_row_is_final() -> None:
    work = rows(work_of(1), t0="CANCELLED")
    rows(work, t0="RUNNING")          # a stale row after a fresh snapshot: ignored
    assert work.counts() == StripCounts(cancelled=1)


def test_a_ready_result_counts_as_done_until_its_row_says_failed() -> None:
    work = work_of(2)
    work.mark_ready(["t0", "t1", "not-ours"], 101.0)
    assert work.counts() == StripCounts(done=2)
    rows(work, t1="RUNNING")           # the row lags the result
    assert work.counts() == StripCounts(done=2)
    rows(work, t1="FAILED")
    assert work.counts() == StripCounts(done=1, failed=1)


def test_waiting_refs_leave_out_tasks_over_and_refs_the_cell_dropped() -> None:
    refs = [Ref(), Ref(), Ref(), Ref()]
    work = work_of(4, refs=refs)
    work.mark_ready(["t0"], 101.0)
    rows(work, t1="FINISHED")
    kept = refs[3]
    del refs[:]
    gc.collect()
    assert work.waiting_refs() == [kept]


def test_adding_a_task_twice_counts_it_once() -> None:
    work = work_of(2)
    work.add("t0", None, 101.0, 1101.0)
    assert work.counts().total == 2


def test_covers_only_the_cells_own_tasks() -> None:
    work = work_of(3)
    assert work.covers(["t0", "t2"])
    assert not work.covers(["t0", "elsewhere"])
    assert not work.covers([])


def test_due_counts_from_the_oldest_unfinished_task() -> None:
    work = work_of(1, at=100.0)
    work.add("late", None, 110.0, 1110.0)
    assert work.due(101.0, 1.0)
    rows(work, t0="FINISHED")          # only the late one is left, submitted at 110
    assert not work.due(110.5, 1.0)
    assert work.due(111.0, 1.0)
    rows(work, late="FINISHED")
    assert not work.due(200.0, 1.0)


def test_settled_waits_for_the_rows_of_ready_results() -> None:
    work = rows(work_of(2), t0=TaskRow("FINISHED", 1101.0))
    work.mark_ready(["t1"], 102.0)
    work.observe(102.0)
    assert work.over_at == 102.0
    assert not work.settled(102.0 + SETTLE_S / 2)
    assert work.settled(102.0 + SETTLE_S)
    rows(work, t1=TaskRow("FAILED", 1101.5))
    assert work.settled(102.0)


def test_a_new_task_reopens_a_cell_seen_over() -> None:
    work = rows(work_of(1), t0="FINISHED")
    work.observe(101.0)
    assert work.over_at == 101.0
    work.add("t1", None, 102.0, 1102.0)
    assert work.over_at is None
    assert not work.settled(200.0)


def test_elapsed_by_the_rows_end_times_else_as_observed() -> None:
    work = rows(work_of(2, at=100.0), t0=TaskRow("FINISHED", 1101.0))   # submitted at wall 1100
    rows(work, t1=TaskRow("FINISHED", 1103.2))
    work.observe(103.5)                # seen over a little after the last one ended
    assert work.elapsed(104.0) == pytest.approx(3.2)
    skewed = rows(work_of(1, at=100.0), t0=TaskRow("FINISHED", 1200.0))  # a clock that disagrees
    skewed.observe(103.5)
    assert skewed.elapsed(104.0) == pytest.approx(3.5)
    unknown = work_of(1, at=100.0)    # no end time (a result found ready): as observed
    unknown.mark_ready(["t0"], 102.0)
    unknown.observe(102.25)
    assert unknown.elapsed(110.0) == pytest.approx(2.25)


def step(work: CellWork, now: float, **kwargs: bool) -> str:
    flags = {"ended": False, "shown": False, "holding_off": False, "synced": True} | kwargs
    return next_step(work, now, delay=1.0, **flags)


def test_a_strip_shows_once_work_is_unfinished_for_the_delay() -> None:
    work = work_of(3, at=100.0)
    assert step(work, 100.5) == "wait"
    assert step(work, 101.0, synced=False) == "sync"   # subscribe to the rows first
    assert step(work, 101.0) == "show"
    assert step(work, 101.0, ended=True) == "show"     # the cell returned before its tasks ended


def test_a_get_bar_holds_the_strip_off() -> None:
    assert step(work_of(3, at=100.0), 105.0, holding_off=True) == "wait"


def test_work_over_within_the_delay_gets_no_strip() -> None:
    work = rows(work_of(2, at=100.0), t0="FINISHED", t1="FINISHED")
    assert step(work, 105.0) == "wait"                 # the cell still runs: it may start more
    assert step(work, 105.0, ended=True) == "forget"
    known = work_of(2, at=100.0)
    known.mark_ready(["t0", "t1"], 100.5)              # known from the driver: no rows needed
    assert step(known, 105.0, ended=True, synced=False) == "forget"


def test_a_shown_strip_updates_until_the_ended_cells_work_settles() -> None:
    work = rows(work_of(2, at=100.0), t0="FINISHED", t1="RUNNING")
    assert step(work, 102.0, shown=True, ended=True) == "update"
    rows(work, t1="FINISHED")
    assert step(work, 103.0, shown=True) == "update"          # over, but the cell may start more
    assert step(work, 103.0, shown=True, ended=True) == "finish"


@pytest.mark.parametrize("value, allowed", [
    (None, True), ("", True), ("1", True), ("on", True), (" TRUE ", True), ("yes", True),
    ("0", False), ("off", False), ("False", False), ("no", False),
    ("maybe", None), ("2", None),
])
def test_env_values(value: str | None, allowed: bool | None) -> None:
    assert env_allows(value) is allowed
