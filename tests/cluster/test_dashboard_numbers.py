"""The dashboard's numbers against known workloads on a real cluster (``rt.init(num_cpus=2)``).

Each workload is held on flag files, so the test knows what must be true at each point:
how many tasks execute (two CPU slots: at most two), which are only sent ahead to a busy
worker, when each one could begin (after the test released the one before it), how many
calls an actor still has, what was cancelled. The numbers are read where users read them:
``runtime.state`` rows and the dashboard's model (``widgets.model.ClusterModel``), never
pixels. Rows reach the GCS in batches and actor rows on the node's heartbeat, so the test
waits for them with ``wait_for``; no test sleeps or asserts on elapsed wall time.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable

import cloudpickle
import pytest

import runtime as rt
from runtime import state
from runtime.exceptions import TaskCancelledError
from runtime.protocol.states import ActorState, TaskState
from runtime.testing.wait import wait_for
from tests.cluster.conftest import Flag
from widgets.model import ClusterModel

pytestmark = pytest.mark.cluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SLOTS = 2


@rt.remote(max_retries=0)
def held(flag: Flag) -> str:
    flag.wait()
    return flag.path


@rt.remote
class Keeper:
    def echo(self, x: int) -> int:
        return x

    def hold(self, flag: Flag) -> str:
        flag.wait()
        return flag.path


def _rows(name: str) -> list[state.TaskState]:
    return [t for t in state.list_tasks(limit=10_000) if t.name.endswith(name)]


def _all_in(rows: list[state.TaskState], n: int, state_: str) -> list[state.TaskState] | None:
    """``rows`` when there are ``n`` of them, all in ``state_``; else None (for ``wait_for``)."""
    return rows if len(rows) == n and all(t.state == state_ for t in rows) else None


def _model(rows: list[state.TaskState]) -> ClusterModel:
    m = ClusterModel()
    for t in rows:
        m.apply(state.Change("tasks", t.task_id, t))
    return m


def _counts(rows: list[state.TaskState]) -> dict[str, int]:
    return dict(_model(rows).view(now=time.time()).futures.counts)


def test_tasks_sent_ahead_are_not_running_and_durations_start_at_execution(
        cluster: rt.ClusterInfo, make_flag: Callable[[str], Flag]) -> None:
    n = 10
    flags = [make_flag(f"held-{i}") for i in range(n)]
    refs = [held.remote(f) for f in flags]
    ids = {r.task_id().hex() for r in refs}

    def ours() -> list[state.TaskState]:
        return [t for t in _rows("held") if t.task_id in ids]

    def settled() -> Counter[str] | None:
        c = Counter(t.state for t in ours())
        return c if sum(c.values()) == n and c[TaskState.RUNNING] == SLOTS else None

    states = wait_for(settled, timeout=30, what=f"{n} tasks known, {SLOTS} of them RUNNING")
    # The rest wait: sent ahead to a busy worker, or queued; none is counted running.
    assert set(states) <= {TaskState.RUNNING, TaskState.SENT_AHEAD, TaskState.QUEUED,
                           TaskState.SUBMITTED}, states
    assert states[TaskState.SENT_AHEAD] > 0, states  # the pipelining this test is about
    counts = _counts(ours())
    assert counts["running"] == SLOTS, counts
    assert counts["sent ahead"] == states[TaskState.SENT_AHEAD], counts
    assert counts["running"] + counts["sent ahead"] + counts["pending"] == n, counts
    waiting = [t for t in ours() if t.state == TaskState.SENT_AHEAD]
    assert all(t.start_time is None for t in waiting), waiting  # not started: no start time

    # Release one at a time, in order; each ends before the next is released. A worker
    # runs what it was sent in order, so the lowest unreleased task is always executing.
    released: list[float] = []
    for i, (flag, ref) in enumerate(zip(flags, refs, strict=True)):
        running = sum(t.state == TaskState.RUNNING for t in ours())
        assert running <= SLOTS, f"{running} tasks RUNNING on {SLOTS} slots before release {i}"
        released.append(time.time())
        flag.set()
        assert rt.get(ref, timeout=30) == flag.path

    done = wait_for(lambda: _all_in(ours(), n, TaskState.FINISHED), timeout=30,
                    what=f"{n} FINISHED rows")
    starts = sorted(t.start_time for t in done if t.start_time is not None)
    assert len(starts) == n, done
    # Before release k, k tasks had ended and at most SLOTS were executing: the (k+SLOTS+1)th
    # start cannot come before it. A start taken when a task was sent ahead breaks this.
    for k in range(n - SLOTS):
        assert starts[k + SLOTS] >= released[k], (k, starts, released)
    for t in done:
        assert t.duration is not None and t.end_time is not None and t.start_time is not None
        assert t.submit_time is not None and t.start_time >= t.submit_time
    # Two slots cannot execute more than twice the span of the whole run.
    span = max(t.end_time or 0.0 for t in done) - min(starts)
    busy = sum(t.duration or 0.0 for t in done)
    assert busy <= SLOTS * span, (busy, span)
    counts = _counts(done)
    assert counts["finished"] == n and counts["running"] == counts["sent ahead"] == 0, counts


def _actor_row(handle: rt.ActorHandle, state_: str, pending: int) -> state.ActorState | None:
    """The actor's row when it is in ``state_`` with ``pending`` calls, else None."""
    row = next((a for a in state.list_actors() if a.actor_id == handle.actor_id), None)
    return row if row is not None and row.state == state_ and row.pending_calls == pending else None


def test_actor_pending_calls_fall_as_calls_return(cluster: rt.ClusterInfo,
                                                  make_flag: Callable[[str], Flag]) -> None:
    keeper = Keeper.remote()
    assert rt.get([keeper.echo.remote(i) for i in range(5)], timeout=30) == list(range(5))
    # Five calls returned: its constructor returned before them.
    row = wait_for(lambda: _actor_row(keeper, ActorState.ALIVE, 0), timeout=10,
                   what="the actor ALIVE with 0 pending calls after 5 calls returned")
    assert row.pending_calls == 0
    assert keeper.state() == ActorState.ALIVE
    assert "state=ALIVE" in repr(keeper)

    flags = [make_flag(f"call-{i}") for i in range(4)]
    refs = [keeper.hold.remote(f) for f in flags]
    wait_for(lambda: _actor_row(keeper, ActorState.ALIVE, 4), timeout=10,
             what="4 pending calls while they are held")
    for i, (flag, ref) in enumerate(zip(flags, refs, strict=True)):
        flag.set()
        rt.get(ref, timeout=30)
        left = len(flags) - i - 1
        wait_for(lambda left=left: _actor_row(keeper, ActorState.ALIVE, left), timeout=10,
                 what=f"{left} pending calls after {i + 1} returned")
    model = ClusterModel()
    actor = _actor_row(keeper, ActorState.ALIVE, 0)
    assert actor is not None
    model.apply(state.Change("actors", actor.actor_id, actor))
    rows = model.view(now=time.time()).actors.rows
    assert [(r.state, r.pending_calls) for r in rows] == [(ActorState.ALIVE, 0)]
    rt.kill(keeper)


def test_cancelled_tasks_are_counted_as_cancelled(cluster: rt.ClusterInfo,
                                                  make_flag: Callable[[str], Flag]) -> None:
    never = make_flag("never")
    refs = [held.remote(never) for _ in range(3)]
    ids = {r.task_id().hex() for r in refs}

    def ours() -> list[state.TaskState]:
        return [t for t in _rows("held") if t.task_id in ids]

    wait_for(lambda: sum(t.state == TaskState.RUNNING for t in ours()) == SLOTS, timeout=30,
             what=f"{SLOTS} tasks RUNNING")
    rt.cancel(refs[0])  # executing: interrupted
    rt.cancel(refs[1], force=True)  # executing: its worker is killed
    rt.cancel(refs[2])  # sent ahead or queued: never starts
    for r in refs:
        with pytest.raises(TaskCancelledError):
            rt.get(r, timeout=30)
    rows = wait_for(lambda: _all_in(ours(), 3, TaskState.CANCELLED), timeout=30,
                    what="3 CANCELLED rows")
    counts = _counts(rows)
    assert counts["cancelled"] == 3 and counts["failed"] == 0, counts
    assert state.summarize_tasks().get(TaskState.CANCELLED, 0) >= 3


def test_a_cancelled_actor_call_is_counted_as_cancelled(cluster: rt.ClusterInfo,
                                                        make_flag: Callable[[str], Flag]) -> None:
    """As a ``%%remote --session`` cell's call when the cell is interrupted."""
    keeper = Keeper.remote()
    never = make_flag("never-call")
    ref = keeper.hold.remote(never)
    wait_for(lambda: (t := state.get_task(ref)) is not None and t.state == TaskState.RUNNING,
             timeout=30, what="the held call RUNNING")
    rt.cancel(ref)
    with pytest.raises(TaskCancelledError):
        rt.get(ref, timeout=30)
    row = wait_for(lambda: _all_in([t] if (t := state.get_task(ref)) else [], 1, TaskState.CANCELLED),
                   timeout=30, what="the call's row CANCELLED")
    counts = _counts(row)
    assert counts["cancelled"] == 1 and counts["failed"] == 0, counts
    assert rt.get(keeper.echo.remote(7), timeout=30) == 7  # the actor serves on
    rt.kill(keeper)
