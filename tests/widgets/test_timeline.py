"""The Timeline section's pure model and its SVG: task rows in, lanes and bars out.

No cluster, no threads, no clock: times are plain numbers and ``view(now)`` takes "now".
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from runtime.protocol import common_pb2
from runtime.state import Change, NodeState, TaskState
from widgets.model import ClusterModel
from widgets.render import FAILED_COLOUR, snapshot_html, timeline_chart, timeline_legend
from widgets.timeline import PALETTE, TimelineModel, TimelineView, window_text

N1, N2 = "aa" * 16, "bb" * 16


def row(tid: str, state: str, *, start: float | None, end: float | None = None, pid: int | None = 11,
        node: str | None = N1, name: str = "f", attempt: int = 0, detail: str = "",
        history: tuple[common_pb2.TaskEvent, ...] = ()) -> TaskState:
    return TaskState(task_id=tid, name=name, job_id="01000000", state=state, node_id=node,
                     worker_pid=pid, submit_time=0.5, start_time=start, end_time=end, detail=detail,
                     attempt=attempt, actor_id=None, _events=history)


def ev(tid: str, state: str, time: float, attempt: int) -> common_pb2.TaskEvent:
    return common_pb2.TaskEvent(task_id=bytes.fromhex(tid), state=state, time=time, attempt=attempt)


def node(nid: str, start: float) -> NodeState:
    return NodeState(node_id=nid, address="127.0.0.1:1", hostname="box", alive=True,
                     resources_total={"CPU": 2.0}, resources_available={"CPU": 2.0}, queue_length=0,
                     store_used=0, store_capacity=100, num_workers=2, cpu_percent=0.0, memory_used=1,
                     memory_total=2, gpus=(), last_heartbeat=start, death_cause="", start_time=start,
                     pid=1, labels={})


def bars_of(view: TimelineView) -> list[tuple[str, int | None, str, float, float | None]]:
    return [(b.task_id, lane.pid, b.state, b.start, b.end) for lane in view.lanes for b in lane.bars]


# ---- lanes and bars ---------------------------------------------------------------------------


def test_one_lane_per_worker_grouped_by_node_and_a_bar_per_task() -> None:
    m = TimelineModel()
    # 6 tasks of known durations: 2 workers on N1, 1 on N2.
    known = [("t0", N1, 11, 10.0, 12.0), ("t1", N1, 12, 10.0, 11.0), ("t2", N1, 11, 12.0, 15.0),
             ("t3", N2, 21, 11.0, 13.0), ("t4", N1, 12, 11.0, 14.0), ("t5", N2, 21, 13.0, 16.0)]
    for tid, nid, pid, start, end in known:
        m.apply(tid, row(tid, "RUNNING", start=start, pid=pid, node=nid))
        m.apply(tid, row(tid, "FINISHED", start=start, end=end, pid=pid, node=nid))
    v = m.view(now=20.0, window_s=10.0, node_order=[N2, N1], label=lambda n: f"node-{n[:2]}")
    # N2 first (the Nodes section's order), then each node's workers by pid.
    assert [(lane.node, lane.pid) for lane in v.lanes] == [("node-bb", 21), ("node-aa", 11), ("node-aa", 12)]
    assert v.bars == 6
    assert [[b.task_id for b in lane.bars] for lane in v.lanes] == [["t3", "t5"], ["t0", "t2"], ["t1", "t4"]]
    # x and width are the times over the window [10, 20].
    spans = {b.task_id: v.span(b) for lane in v.lanes for b in lane.bars}
    for tid, _, _, start, end in known:
        assert spans[tid] == pytest.approx(((start - 10.0) / 10.0, (end - start) / 10.0))
    assert all(b.duration(20.0) == pytest.approx(end - start)
               for lane in v.lanes for b in lane.bars
               for tid, _, _, start, end in known if tid == b.task_id)


def test_a_running_bar_reaches_now_and_ends_when_the_task_does() -> None:
    m = TimelineModel()
    m.apply("t", row("t", "RUNNING", start=100.0))
    v = m.view(now=103.0, window_s=30.0)
    [bar] = [b for lane in v.lanes for b in lane.bars]
    assert bar.end is None and bar.duration(103.0) == pytest.approx(3.0)
    assert v.span(bar) == pytest.approx((27 / 30, 3 / 30))
    m.apply("t", row("t", "FINISHED", start=100.0, end=104.0))
    assert bars_of(m.view(now=110.0, window_s=30.0)) == [("t", 11, "FINISHED", 100.0, 104.0)]


def test_colours_are_stable_per_function_and_distinct_between_functions() -> None:
    m = TimelineModel()
    for i, name in enumerate(["load", "train", "load", "eval", "train"]):
        m.apply(f"t{i}", row(f"t{i}", "FINISHED", start=float(i), end=i + 0.5, name=name))
    v = m.view(now=10.0, window_s=30.0)
    colours: dict[str, set[str]] = {}
    for lane in v.lanes:
        for b in lane.bars:
            colours.setdefault(b.name, set()).add(b.colour)
    assert {k: len(c) for k, c in colours.items()} == {"load": 1, "train": 1, "eval": 1}
    assert v.legend == (("load", PALETTE[0]), ("train", PALETTE[1]), ("eval", PALETTE[2]))
    # The same function keeps its colour in later views and after more functions appear.
    m.apply("t9", row("t9", "FINISHED", start=9.0, end=9.5, name="other"))
    assert dict(m.view(now=10.0, window_s=30.0).legend)["load"] == PALETTE[0]
    assert m.colour("load") == PALETTE[0] and m.colour("eval") == PALETTE[2]


def test_failed_and_cancelled_runs_are_marked() -> None:
    m = TimelineModel()
    m.apply("ok", row("ok", "FINISHED", start=1.0, end=2.0))
    m.apply("bad", row("bad", "FAILED", start=1.0, end=3.0, detail="ValueError: boom"))
    m.apply("stop", row("stop", "CANCELLED", start=2.0, end=4.0))
    m.apply("never", row("never", "CANCELLED", start=None, end=4.0))  # cancelled before it ran
    v = m.view(now=5.0, window_s=30.0)
    marks = {b.task_id: (b.failed, b.cancelled) for lane in v.lanes for b in lane.bars}
    assert marks == {"ok": (False, False), "bad": (True, False), "stop": (False, True)}
    svg = timeline_chart(v)
    assert svg.count('class="cellray-bar') == 3
    assert svg.count("cellray-bar-failed") == 1 and svg.count("cellray-fail-mark") == 1
    assert f'stroke="{FAILED_COLOUR}"' in svg
    assert svg.count("cellray-bar-cancelled") == 1 and 'stroke-dasharray="2,2"' in svg
    assert "ValueError: boom" in svg  # in the failed bar's tooltip


def test_a_retried_attempt_ends_when_the_retry_began_and_the_retry_gets_its_own_bar() -> None:
    tid = "cc" * 16
    m = TimelineModel()
    m.apply(tid, row(tid, "RUNNING", start=10.0, pid=11))
    # The worker died: the retry's rows still carry the first run's start time.
    retrying = row(tid, "RETRYING", start=10.0, pid=11, attempt=1, detail="worker died",
                   history=(ev(tid, "RUNNING", 10.0, 0), ev(tid, "RETRYING", 13.0, 1)))
    m.apply(tid, retrying)
    m.apply(tid, row(tid, "QUEUED", start=10.0, pid=11, attempt=1, history=retrying._events))
    m.apply(tid, row(tid, "RUNNING", start=14.0, pid=12, attempt=1))
    m.apply(tid, row(tid, "FINISHED", start=14.0, end=16.0, pid=12, attempt=1))
    v = m.view(now=20.0, window_s=30.0)
    assert bars_of(v) == [(tid, 11, "FAILED", 10.0, 13.0), (tid, 12, "FINISHED", 14.0, 16.0)]
    first = v.lanes[0].bars[0]
    assert first.attempt == 0 and first.detail == "retried as attempt 1: worker died"


def test_a_retry_cancelled_before_it_ran_adds_no_bar() -> None:
    m = TimelineModel()
    m.apply("t", row("t", "FAILED", start=10.0, end=11.0))
    m.apply("t", row("t", "CANCELLED", start=10.0, end=12.0, attempt=1))  # same start: no new run
    assert bars_of(m.view(now=20.0, window_s=30.0)) == [("t", 11, "FAILED", 10.0, 11.0)]


def test_the_window_zoom_drops_old_bars() -> None:
    m = TimelineModel()
    for i, start in enumerate([10.0, 250.0, 280.0, 295.0]):
        m.apply(f"t{i}", row(f"t{i}", "FINISHED", start=start, end=start + 2.0))
    v = m.view(now=300.0, window_s=300.0)
    assert v.bars == 4
    z = v.zoom(30.0)
    assert (z.window_s, z.bars) == (30.0, 2)
    assert [b.task_id for lane in z.lanes for b in lane.bars] == ["t2", "t3"]
    assert z.span(z.lanes[0].bars[0]) == pytest.approx((10 / 30, 2 / 30))
    assert v.zoom(60.0).bars == 3 and z.zoom(900.0).bars == 4  # zooming out needs no model
    assert "no task ran in the last 5 s" in timeline_chart(m.view(now=1000.0, window_s=5.0))
    svg = timeline_chart(z)
    assert 'data-window="30"' in svg and ">-30 s<" in svg and ">now<" in svg
    assert window_text(30.0) == "30 s" and window_text(900.0) == "15 min"


def test_memory_is_bounded_by_max_bars_oldest_ended_first() -> None:
    m = TimelineModel(max_bars=5)
    m.apply("long", row("long", "RUNNING", start=0.0))
    for i in range(20):
        m.apply(f"t{i}", row(f"t{i}", "FINISHED", start=float(i + 1), end=i + 1.5))
    assert len(m) == 5 and m.dropped == 16
    ids = [b.task_id for lane in m.view(now=30.0, window_s=60.0).lanes for b in lane.bars]
    assert ids == ["long", "t16", "t17", "t18", "t19"]  # the running one stays
    assert "16 older runs not kept" in timeline_legend(m.view(now=30.0, window_s=60.0))


def test_a_dropped_task_keeps_an_ended_bar_and_loses_an_open_one() -> None:
    m = TimelineModel()
    m.apply("done", row("done", "FINISHED", start=1.0, end=2.0))
    m.apply("open", row("open", "RUNNING", start=1.0, pid=12))
    m.apply("done", None)
    m.apply("open", None)
    assert [b[0] for b in bars_of(m.view(now=5.0, window_s=30.0))] == ["done"]


def test_svg_bars_have_tooltips_and_positions_in_proportion() -> None:
    m = TimelineModel()
    m.apply("aa11", row("aa11", "FINISHED", start=10.0, end=15.0, name="<b>evil</b>"))
    m.apply("bb22", row("bb22", "FINISHED", start=15.0, end=20.0, pid=12, name="g"))
    svg = timeline_chart(m.view(now=20.0, window_s=10.0), width=1000)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<b>evil" not in svg and "&lt;b&gt;evil" in svg
    plot_w = 1000 - 110 - 14  # the chart's plot area (labels on the left, a margin on the right)
    rects = re.findall(r'<rect class="cellray-bar[^"]*" data-fn="([^"]*)" data-runs="1" '
                       r'x="([\d.]+)" y="\d+" width="([\d.]+)"', svg)
    got = {fn: (float(x), float(wd)) for fn, x, wd in rects}
    assert got["&lt;b&gt;evil&lt;/b&gt;"] == pytest.approx((110.0, plot_w / 2), abs=0.1)
    assert got["g"] == pytest.approx((110.0 + plot_w / 2, plot_w / 2), abs=0.1)
    assert "<title>&lt;b&gt;evil&lt;/b&gt;() · task aa11 · attempt 0 · 5.0 s · FINISHED</title>" in svg
    assert svg.count('class="cellray-lane"') == 2


def test_runs_that_would_overlap_on_screen_are_drawn_as_one_bar_with_their_count() -> None:
    m = TimelineModel()
    for i in range(100):  # 100 runs of 10 ms, back to back, on one worker
        m.apply(f"t{i}", row(f"t{i}", "FINISHED", start=100 + i / 100, end=100 + (i + 1) / 100))
    m.apply("bad", row("bad", "FAILED", start=101.0, end=101.005))
    m.apply("g", row("g", "FINISHED", start=101.01, end=101.02, name="g"))
    v = m.view(now=400.0, window_s=300.0)  # 300 s over 776 px: all of them within 2 px
    marks = v.marks(v.lanes[0], 776)
    assert [(len(mk.bars), mk.bars[0].name, mk.bars[0].state) for mk in marks] == [
        (100, "f", "FINISHED"), (1, "f", "FAILED"), (1, "g", "FINISHED")]
    svg = timeline_chart(v)
    assert sorted(int(n) for n in re.findall(r'data-runs="(\d+)"', svg)) == [1, 1, 100]
    assert svg.count("<title>100 runs of f() · FINISHED · ") == 1 and "each 10.0 ms to 10.0 ms" in svg
    assert svg.count("cellray-fail-mark") == 1  # the failure is never hidden in a merged bar
    # Zoomed in, runs that only touch are apart again: 1.2 s over 776 px, 10 ms is 6.5 px.
    z = m.view(now=101.1, window_s=1.2)
    assert len(z.marks(z.lanes[0], 776)) == 102


# ---- in the dashboard's model --------------------------------------------------------------------


def test_the_cluster_model_feeds_the_timeline_in_node_order() -> None:
    m = ClusterModel()
    m.apply_all([Change("nodes", N2, node(N2, 2.0)), Change("nodes", N1, node(N1, 1.0)),
                 Change("", "", None, snapshot_done=True),
                 Change("tasks", "a", row("a", "FINISHED", start=100.0, end=101.0, node=N2, pid=21)),
                 Change("tasks", "b", row("b", "RUNNING", start=100.5, node=N1, pid=11))])
    v = m.view(102.0)
    assert [(lane.node, lane.pid) for lane in v.timeline.lanes] == [(N1[:6], 11), (N2[:6], 21)]
    assert v.timeline.window_s == 300.0
    assert "Timeline: 2 task runs on 2 worker(s) in the last 5 min" in v.summary()
    assert "<h4>Timeline</h4>" in snapshot_html(v, "live")


def test_after_a_reset_open_bars_of_tasks_gone_are_forgotten() -> None:
    m = ClusterModel()
    m.apply_all([Change("", "", None, snapshot_done=True),
                 Change("tasks", "a", row("a", "RUNNING", start=100.0)),
                 Change("tasks", "b", row("b", "FINISHED", start=100.0, end=101.0, pid=12)),
                 Change("", "", None, reset=True), Change("", "", None, snapshot_done=True)])
    assert [b.task_id for lane in m.view(102.0).timeline.lanes for b in lane.bars] == ["b"]


def test_the_timeline_modules_do_not_import_ipywidgets() -> None:
    code = "import sys, widgets.timeline, widgets.objects_view; sys.exit('ipywidgets' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
