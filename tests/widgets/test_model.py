"""The dashboard's pure model: feed ``runtime.state.Change`` objects, assert counts and rows.

No cluster, no threads, no clock: times are plain numbers and ``view(now)`` takes "now".
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from runtime.state import ActorState, Change, GpuState, NodeState, SchedulerEvent, TaskState
from widgets.model import ClusterModel, DecisionSeries, task_category, waiting_reason

N1, N2 = "aa" * 16, "bb" * 16


def task(tid: str, state: str, *, node: str | None = N1, submit: float | None = 100.0,
         start: float | None = None, end: float | None = None, detail: str = "", attempt: int = 0,
         name: str = "f", actor_id: str | None = None, pid: int | None = None) -> TaskState:
    return TaskState(task_id=tid, name=name, job_id="01000000", state=state, node_id=node,
                     worker_pid=pid, submit_time=submit, start_time=start, end_time=end,
                     detail=detail, attempt=attempt, actor_id=actor_id)


def event(tid: str, state: str, *, node: str | None = N1, time: float = 100.0, attempt: int = 0,
          target: str | None = None, detail: str = "", name: str = "f") -> SchedulerEvent:
    return SchedulerEvent(task_id=tid, name=name, state=state, node_id=node, target_node_id=target,
                          scheduler="gs-0" if target else "", detail=detail, time=time, attempt=attempt)


def node(nid: str, *, start: float = 1.0, alive: bool = True, cpu_free: float = 2.0,
         gpus: tuple[GpuState, ...] = ()) -> NodeState:
    return NodeState(node_id=nid, address="127.0.0.1:1", hostname="box", alive=alive,
                     resources_total={"CPU": 2.0}, resources_available={"CPU": cpu_free},
                     queue_length=0, store_used=10, store_capacity=100, num_workers=2,
                     cpu_percent=50.0, memory_used=1, memory_total=2, gpus=gpus,
                     last_heartbeat=start, death_cause="" if alive else "stopped",
                     start_time=start, pid=1, labels={})


def actor(aid: str, state: str, **kw: Any) -> ActorState:
    fields: dict[str, Any] = {"actor_id": aid, "class_name": "Counter", "name": None, "namespace": "",
                              "state": state, "node_id": N1, "pid": 7, "num_restarts": 0,
                              "max_restarts": 2, "death_cause": "", "pending_calls": 0,
                              "start_time": 1.0}
    fields.update(kw)
    return ActorState(**fields)


def ran(tid: str, state: str, *, node: str = N1, start: float = 101.0, end: float | None = None,
        attempt: int = 0, **kw: Any) -> TaskState:
    """A task that started running on ``node`` at ``start``."""
    return task(tid, state, node=node, start=start, end=end, attempt=attempt, **kw)


def put(table: str, key: str, value: Any, snapshot: bool = False) -> Change:
    return Change(table, key, value, snapshot=snapshot)


DONE = Change("", "", None, snapshot_done=True)
RESET = Change("", "", None, reset=True)


def feed(m: ClusterModel, *changes: Change) -> ClusterModel:
    m.apply_all(changes)
    return m


# ---- counts ----------------------------------------------------------------------------------


def test_counts_follow_snapshot_then_deltas() -> None:
    m = ClusterModel()
    feed(m, put("tasks", "t1", task("t1", "SUBMITTED"), snapshot=True),
         put("tasks", "t2", ran("t2", "FINISHED", end=102.0), snapshot=True))
    assert not m.synced
    feed(m, DONE)
    assert m.synced
    assert m.view(103.0).futures.counts == {"pending": 1, "sent ahead": 0, "running": 0, "finished": 1,
                                            "failed": 0, "cancelled": 0}
    feed(m, put("tasks", "t1", ran("t1", "RUNNING")))
    assert m.view(103.0).futures.counts["running"] == 1
    assert m.view(103.0).futures.counts["pending"] == 0
    feed(m, put("tasks", "t1", ran("t1", "FAILED", end=103.0, detail="ValueError: boom")),
         put("tasks", "t3", task("t3", "CANCELLED")))
    c = m.view(104.0).futures.counts
    assert (c["pending"], c["running"], c["finished"], c["failed"], c["cancelled"]) == (0, 0, 1, 1, 1)


def test_finished_tasks_stay_counted_after_the_gcs_drops_their_rows() -> None:
    m = feed(ClusterModel(), DONE, *(put("tasks", f"t{i}", ran(f"t{i}", "FINISHED", end=102.0))
                                     for i in range(5)))
    feed(m, *(Change("tasks", f"t{i}", None) for i in range(5)))
    assert m.tasks == {}
    assert m.view(105.0).futures.counts["finished"] == 5


def test_a_task_that_runs_again_from_lineage_is_counted_once() -> None:
    m = feed(ClusterModel(), DONE, put("tasks", "t", ran("t", "FINISHED", end=102.0)))
    feed(m, put("tasks", "t", task("t", "SUBMITTED", attempt=1)))
    assert m.view(103.0).futures.counts["finished"] == 0
    assert m.view(103.0).futures.counts["pending"] == 1
    feed(m, put("tasks", "t", ran("t", "FINISHED", start=104.0, end=105.0, attempt=1)))
    assert m.view(106.0).futures.counts == {"pending": 0, "sent ahead": 0, "running": 0, "finished": 1,
                                            "failed": 0, "cancelled": 0}


def test_a_reset_and_fresh_snapshot_count_nothing_twice() -> None:
    m = feed(ClusterModel(), put("nodes", N1, node(N1)), DONE,
             put("tasks", "t1", ran("t1", "FINISHED", end=102.0)),
             put("tasks", "t2", ran("t2", "RUNNING")),
             put("tasks", "gone", ran("gone", "FINISHED", end=102.0)),
             put("events", "01", event("t9", "SPILLED", target=N2, detail="queue full")))
    feed(m, RESET)
    assert not m.synced and m.resets == 1 and m.nodes == {} and m.tasks == {}
    assert m.view(103.0).futures.counts["running"] == 0
    # The fresh snapshot: "gone" was dropped by the GCS meanwhile; the event comes again.
    feed(m, put("nodes", N1, node(N1), snapshot=True),
         put("tasks", "t1", ran("t1", "FINISHED", end=102.0), snapshot=True),
         put("tasks", "t2", ran("t2", "FINISHED", end=103.0), snapshot=True),
         put("events", "01", event("t9", "SPILLED", target=N2, detail="queue full"), snapshot=True),
         DONE)
    v = m.view(104.0)
    assert m.synced
    assert v.futures.counts == {"pending": 0, "sent ahead": 0, "running": 0, "finished": 3, "failed": 0,
                                 "cancelled": 0}
    [s1] = [s for s in v.scheduler.series if s.label == N1[:6]]
    assert (s1.total_local, s1.total_spilled) == (3, 1)
    assert len(v.scheduler.decisions) == 1
    assert "gone" not in m._credited  # forgotten: no deletion will ever come for it


# ---- why is it waiting ----------------------------------------------------------------------


def test_pending_rows_say_what_they_wait_for_infeasible_first() -> None:
    m = ClusterModel()
    need = "Task big() needs {CPU: 1, GPU: 4} but no node has that much (this node has {CPU: 2})."
    feed(m, DONE,
         put("tasks", "q", task("q", "SUBMITTED", submit=100.0)),
         put("tasks", "big", task("big", "INFEASIBLE", submit=101.0, detail=need)),
         put("tasks", "r", ran("r", "RUNNING", pid=4121)))
    waiting = m.view(110.0).futures.waiting
    assert [(r.task_id, r.state) for r in waiting] == [("big", "INFEASIBLE"), ("q", "SUBMITTED")]
    assert waiting[0].why == need
    assert waiting[1].why.startswith("queued for 10.0 s")
    latest = {r.task_id: r for r in m.view(110.0).futures.latest}
    assert latest["r"].why == "running in worker pid 4121"


@pytest.mark.parametrize(("t", "expected"), [
    (task("x", "INFEASIBLE"), "infeasible: no node has the resources it needs"),
    (task("x", "QUEUED", submit=None, detail="waiting for 2 inputs"), "queued: waiting for 2 inputs"),
    (task("x", "RETRYING", attempt=1, detail="worker pid 9 died"),
     "retrying (attempt 2) after: worker pid 9 died"),
    (task("x", "SPILLED", detail="local queue over 8"), "spilled to another node: local queue over 8"),
    (task("x", "FAILED", detail="ZeroDivisionError: division by zero"),
     "ZeroDivisionError: division by zero"),
    (task("x", "FINISHED"), ""),
])
def test_waiting_reason(t: TaskState, expected: str) -> None:
    assert waiting_reason(t, now=105.0) == expected


def test_unknown_states_count_as_pending() -> None:
    assert [task_category(s) for s in ("SUBMITTED", "SPILLED", "SOMETHING_NEW", "RUNNING", "FAILED")] \
        == ["pending", "pending", "pending", "running", "failed"]


# ---- latest tasks -----------------------------------------------------------------------------


def test_latest_tasks_are_the_most_recently_changed_with_durations() -> None:
    m = ClusterModel(max_rows=3)
    feed(m, DONE, *(put("tasks", f"t{i}", task(f"t{i}", "SUBMITTED")) for i in range(5)))
    feed(m, put("tasks", "t0", ran("t0", "FINISHED", start=101.0, end=101.5)),
         put("tasks", "t1", ran("t1", "RUNNING", start=102.0)))
    rows = m.view(104.0).futures.latest
    assert [r.task_id for r in rows] == ["t1", "t0", "t4"]
    assert rows[0].duration == pytest.approx(2.0)       # running: so far
    assert rows[1].duration == pytest.approx(0.5)       # finished: start to end
    assert rows[2].duration is None                     # never started
    assert rows[0].node == N1[:6]


# ---- scheduler decisions -----------------------------------------------------------------------


def test_local_and_spilled_decisions_per_node_over_time() -> None:
    m = ClusterModel(window_s=60.0, bucket_s=10.0)
    feed(m, put("nodes", N1, node(N1, start=1.0)), put("nodes", N2, node(N2, start=2.0)), DONE,
         put("tasks", "a", ran("a", "FINISHED", node=N1, start=1001.0, end=1002.0)),
         put("tasks", "b", ran("b", "RUNNING", node=N1, start=1015.0)),
         put("tasks", "b", ran("b", "FINISHED", node=N1, start=1015.0, end=1016.0)),  # same run
         put("tasks", "c", ran("c", "RUNNING", node=N2, start=1031.0)),
         put("events", "01", event("d", "SPILLED", node=N1, time=1032.0, target=N2,
                                   detail="local queue over 8")),
         put("events", "02", event("d", "SCHEDULED", node=N2, time=1032.5, detail="placed here by gs-0")),
         put("events", "03", event("e", "INFEASIBLE", node=N2, time=1033.0, detail="needs GPU: 4")))
    v = m.view(now=1035.0).scheduler
    s1, s2 = v.series
    assert (s1.label, s2.label) == (N1[:6], N2[:6])
    assert len(s1.local) == 6                           # 60 s in 10 s buckets, oldest first
    assert s1.local[-4:] == (1, 1, 0, 0) and s1.spilled[-1] == 1
    assert s2.local[-1] == 1 and sum(s2.spilled) == 0 and s2.received[-1] == 1
    assert (s1.total_local, s1.total_spilled, s2.total_local, s2.total_received) == (2, 1, 1, 1)
    # The table lists spills and infeasible tasks (a placement repeats its spill's target).
    assert [e.state for e in v.decisions] == ["INFEASIBLE", "SPILLED"]   # newest first
    assert v.decisions[1].detail == "local queue over 8" and v.decisions[1].target_node_id == N2
    # Minutes later the bars have left the window; the totals stay.
    later = m.view(now=1200.0).scheduler.series[0]
    assert sum(later.local) == 0 and later.total_local == 2


def test_a_spilled_attempt_is_not_a_local_decision() -> None:
    # Seen as a SPILLED row (in the tasks table) or as a SPILLED event, then running elsewhere.
    m = feed(ClusterModel(), DONE,
             put("tasks", "t", task("t", "SPILLED", detail="queue full")),
             put("tasks", "t", ran("t", "RUNNING", node=N2, start=100.5)),
             put("events", "01", event("u", "SPILLED", time=100.1, target=N2)),
             put("tasks", "u", ran("u", "FINISHED", node=N2, start=100.5, end=101.0)),
             # its retry ran where it was submitted: that attempt is local
             put("tasks", "u", ran("u", "FINISHED", node=N1, start=102.0, end=103.0, attempt=1)))
    totals = {s.label: (s.total_local, s.total_spilled) for s in m.view(104.0).scheduler.series}
    assert totals == {N1[:6]: (1, 1)}   # nothing counted on N2, where the spilled ones ran


def test_actor_method_calls_are_not_scheduler_decisions() -> None:
    m = feed(ClusterModel(), DONE,
             put("tasks", "init", ran("init", "FINISHED", end=102.0, name="Counter.__init__", actor_id="ac")),
             put("tasks", "call", ran("call", "FINISHED", end=102.0, name="Counter.inc", actor_id="ac")))
    assert [s.total_local for s in m.view(103.0).scheduler.series] == [1]


def test_a_task_first_seen_finished_counts_once_at_its_start_time() -> None:
    # Its RUNNING state was never seen as a row of its own (it ran between two changes).
    m = feed(ClusterModel(window_s=60.0, bucket_s=10.0), DONE,
             put("tasks", "t", task("t", "FINISHED", start=101.0, end=102.0)),
             put("tasks", "t", task("t", "FINISHED", start=101.0, end=102.0)))
    [s] = m.view(115.0).scheduler.series
    assert s.total_local == 1 and s.local[-2:] == (1, 0)


def test_decision_series_memory_is_bounded_by_the_window() -> None:
    s = DecisionSeries(bucket_s=1.0, window_s=10.0)
    for t in range(1000):
        s.add(N1, float(t), local=1)
    assert len(s._buckets[N1]) <= 11
    assert s.totals(N1) == (1000, 0, 0)
    local, _, _ = s.series(N1, now=999.5)
    assert local == (1,) * 10


# ---- nodes and actors ---------------------------------------------------------------------------


def test_nodes_in_start_order_and_dead_ones_kept() -> None:
    m = feed(ClusterModel(), put("nodes", N2, node(N2, start=5.0)), put("nodes", N1, node(N1, start=1.0)),
             DONE, put("nodes", N2, node(N2, start=5.0, alive=False)))
    v = m.view(10.0)
    assert [(n.index, n.label, n.state.alive) for n in v.nodes] == [(1, N1[:6], True), (2, N2[:6], False)]
    feed(m, Change("nodes", N2, None))
    assert [n.label for n in m.view(10.0).nodes] == [N1[:6]]


def test_actors_counted_by_state_live_ones_first() -> None:
    m = feed(ClusterModel(), DONE,
             put("actors", "a1", actor("a1", "DEAD", death_cause="killed by rt.kill", start_time=1.0)),
             put("actors", "a2", actor("a2", "ALIVE", name="learner", pending_calls=3, start_time=2.0)),
             put("actors", "a3", actor("a3", "RESTARTING", num_restarts=1, max_restarts=-1, start_time=3.0)))
    v = m.view(10.0).actors
    assert v.counts == {"PENDING": 0, "ALIVE": 1, "RESTARTING": 1, "DEAD": 1}
    assert [(r.actor_id, r.name, r.restarts, r.pending_calls) for r in v.rows] == [
        ("a2", "learner", "0/2", 3), ("a3", "", "1/∞", 0), ("a1", "", "0/2", 0)]
    assert v.rows[-1].death_cause == "killed by rt.kill"


# ---- the plain-text summary ----------------------------------------------------------------------


def test_summary_is_readable_text() -> None:
    m = ClusterModel()
    assert m.view(1.0).summary() == "cellray dashboard: connecting…"
    feed(m, put("nodes", N1, node(N1, cpu_free=1.0)), DONE,
         put("tasks", "t", ran("t", "RUNNING")),
         put("tasks", "big", task("big", "INFEASIBLE", detail="needs {GPU: 4}", name="big")),
         put("actors", "a", actor("a", "ALIVE")))
    text = m.view(110.0).summary()
    assert text.splitlines()[:4] == [
        "Nodes: 1 alive of 1; CPU 1/2 in use",
        "Futures: pending 1, sent ahead 0, running 1, finished 0, failed 0, cancelled 0",
        "Actors: alive 1",
        "Scheduler: 1 local, 0 spilled, 0 received",
    ]
    assert "waiting: big (big): needs {GPU: 4}" in text


def test_the_model_does_not_import_ipywidgets() -> None:
    import subprocess
    code = ("import sys, widgets.model, widgets.views, widgets.render; "
            "sys.exit('ipywidgets' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="bucket_s"):
        ClusterModel(window_s=1.0, bucket_s=5.0)
    with pytest.raises(ValueError, match="max_rows"):
        ClusterModel(max_rows=0)
