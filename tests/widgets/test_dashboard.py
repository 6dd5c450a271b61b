"""``widgets.Dashboard`` on a real cluster, without a front end.

ipywidgets needs no kernel: outside one, each widget gets a ``comm.DummyComm`` that sends
nothing, and the traits hold what a front end would be sent. So these tests read the
widgets' values, and the model behind them, and never patch anything global. They wait
on state with ``wait_for``; a task that must stay running waits on a ``Flag``.
"""

from __future__ import annotations

import gc
import logging
import re
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np
import pytest
from IPython.core.formatters import DisplayFormatter
from IPython.lib.pretty import pretty

import runtime as rt
from runtime.testing.wait import wait_for
from widgets import Dashboard

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@rt.remote
def square(x: int) -> int:
    return x * x


@rt.remote
def held(flag: Any) -> str:
    flag.wait()
    return "done"


@rt.remote
def timed(i: int) -> int:
    return i


@rt.remote(max_retries=0)
def boom() -> None:
    raise ValueError("boom <b>not bold</b>")


@rt.remote(num_gpus=8)
def needs_gpus() -> int:
    return 1


@rt.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self) -> int:
        self.n += 1
        return self.n


def synced(dash: Dashboard) -> Dashboard:
    wait_for(lambda: dash.statistics()["synced"] and dash.status == "live",
             what="the dashboard's first snapshot to arrive and be drawn")
    return dash


def row_of(dash: Dashboard, ref: rt.ObjectRef, where: str = "latest") -> Any:
    return next((r for r in getattr(dash.view().futures, where) if r.task_id == ref.task_id()), None)


# ---- with a cluster of their own: before the module's shared cluster starts ----


def test_dashboard_needs_a_cluster() -> None:
    with pytest.raises(RuntimeError, match=r"runtime\.init\(\)"):
        Dashboard()


def test_shutdown_stops_the_dashboard_and_leaves_no_thread(
        widget_threads: Callable[[], list[threading.Thread]], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert widget_threads() == []
    rt.init(num_cpus=1, log_to_driver=False)
    try:
        dash = synced(Dashboard())
        assert {t.name for t in widget_threads()} == {"cellray-dashboard-refresher",
                                                      "cellray-subscription-nodes-tasks-actors-events-placement_groups-objects"}
    finally:
        rt.shutdown()
    wait_for(lambda: not widget_threads(), what="the dashboard's threads to exit after rt.shutdown()")
    assert dash.status == "stopped: the cluster connection was shut down"
    assert not dash.running
    assert pretty(dash).startswith("cellray dashboard (stopped")
    dash.close()  # still fine: closes the widgets
    assert dash.status == "closed"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# ---- on the module's shared cluster ----


def test_finished_tasks_are_counted_and_drawn(cluster: rt.ClusterInfo) -> None:
    dash = synced(Dashboard(interval=0.05))
    try:
        base = dash.statistics()["counts"]["finished"]
        assert rt.get([square.remote(i) for i in range(20)]) == [i * i for i in range(20)]
        wait_for(lambda: dash.statistics()["counts"]["finished"] == base + 20,
                 what=f"the model to count {base + 20} finished tasks")
        # ... and the refresher copied it into the widget the front end shows.
        tile = dash.futures.tiles["finished"]
        wait_for(lambda: f'<div class="cellray-num">{base + 20}</div>' in tile.value,
                 what=f"the finished tile to show {base + 20}", interval=0.02)
        latest = dash.view().futures.latest
        assert latest and all(r.name == "square" and r.state == "FINISHED" for r in latest)
        assert {r.node for r in latest} == {cluster.node_id[:6]}
        assert all(r.duration is not None and r.duration >= 0 for r in latest)
        [series] = dash.view().scheduler.series
        assert series.label == cluster.node_id[:6] and series.total_local >= 20
        wait_for(lambda: f"{series.total_local} local" in dash.scheduler.chart.value,
                 what="the chart to show the local decisions")
        # The Nodes section: one node, with its CPU slots, memory and object store.
        [block] = dash.nodes.list.children
        assert cluster.node_id[:6] in block.header.value
        assert [m.name.value for m in block.bars.children][:4] == ["CPU slots", "CPU", "memory", "store"]
    finally:
        dash.close()


def test_a_running_task_shows_as_running_until_it_finishes(cluster: rt.ClusterInfo,
                                                          make_flag: Callable[[str], Any]) -> None:
    flag = make_flag("run")
    dash = synced(Dashboard(interval=0.05))
    try:
        ref = held.remote(flag)
        row = wait_for(lambda: (r := row_of(dash, ref)) and r.state == "RUNNING" and r,
                       what="the held task's row to say RUNNING")
        assert row.why.startswith("running in worker pid ")
        assert dash.statistics()["counts"]["running"] >= 1
        wait_for(lambda: "RUNNING" in dash.futures.latest.value, what="the table to show RUNNING")
        flag.set()
        assert rt.get(ref) == "done"
        wait_for(lambda: (r := row_of(dash, ref)) and r.state == "FINISHED",
                 what="the held task's row to say FINISHED")
    finally:
        flag.set()
        dash.close()


def test_a_failed_task_shows_its_error(cluster: rt.ClusterInfo) -> None:
    dash = synced(Dashboard(interval=0.05))
    try:
        base = dash.statistics()["counts"]["failed"]
        ref = boom.remote()
        with pytest.raises(ValueError):
            rt.get(ref)
        row = wait_for(lambda: (r := row_of(dash, ref)) and r.state == "FAILED" and r,
                       what="the failed task's row")
        assert "boom" in row.why
        wait_for(lambda: dash.statistics()["counts"]["failed"] == base + 1, what="one more failed")
        # The error text is shown, escaped (a task's error is not HTML).
        wait_for(lambda: "&lt;b&gt;not bold&lt;/b&gt;" in dash.futures.latest.value,
                 what="the escaped error in the table")
    finally:
        dash.close()


def test_a_task_no_node_fits_says_why_it_waits(cluster: rt.ClusterInfo) -> None:
    dash = synced(Dashboard(interval=0.05))
    ref = needs_gpus.remote()
    try:
        _a_task_no_node_fits(dash, ref)
    finally:
        dash.close()


def _a_task_no_node_fits(dash: Dashboard, ref: rt.ObjectRef) -> None:
    try:
        # The task is first SUBMITTED among the waiting, then INFEASIBLE once the scheduler decides.
        row = wait_for(lambda: (r := row_of(dash, ref, "waiting")) and r.state == "INFEASIBLE" and r,
                       what="the infeasible task among the waiting")
        assert "GPU: 8" in row.why and "no node has that much" in row.why
        wait_for(lambda: "GPU: 8" in dash.futures.waiting.value and
                 dash.futures.waiting_box.layout.display is None,
                 what="the Waiting table to show the reason")
        wait_for(lambda: any(e.task_id == ref.task_id() and e.state == "INFEASIBLE"
                             for e in dash.view().scheduler.decisions),
                 what="the INFEASIBLE decision among the scheduler events")
        assert "needs" in pretty(dash)  # the text fallback names what it waits for
    finally:
        rt.cancel(ref)
    wait_for(lambda: row_of(dash, ref, "waiting") is None, what="the cancelled task to stop waiting")
    wait_for(lambda: dash.futures.waiting_box.layout.display == "none",
             what="the empty Waiting table to hide")


def test_actors_with_their_state_node_and_calls(cluster: rt.ClusterInfo) -> None:
    dash = synced(Dashboard(interval=0.05))
    try:
        counter = Counter.options(name="dash-counter").remote()
        assert rt.get(counter.inc.remote()) == 1

        def row(state: str) -> Any:
            return next((r for r in dash.view().actors.rows
                         if r.actor_id == counter.actor_id and r.state == state), None)

        alive = wait_for(lambda: row("ALIVE"), what="the actor to show ALIVE")
        assert (alive.class_name, alive.name, alive.node) == ("Counter", "dash-counter", cluster.node_id[:6])
        wait_for(lambda: "dash-counter" in dash.actors.table.value, what="the actors table")
        rt.kill(counter)
        wait_for(lambda: row("DEAD"), what="the killed actor to show DEAD")
        wait_for(lambda: "dead" in dash.actors.tiles.value, what="the actor tiles")
    finally:
        dash.close()


def test_the_timeline_has_a_bar_per_task_run_on_the_worker_that_ran_it(cluster: rt.ClusterInfo) -> None:
    dash = synced(Dashboard(interval=0.05))
    try:
        refs = [timed.remote(i) for i in range(6)]
        assert rt.get(refs) == list(range(6))
        ids = {ref.task_id() for ref in refs}

        def runs_in_state() -> set[tuple[Any, ...]] | None:
            tasks = [t for t in rt.state.list_tasks(name="timed", limit=None) if t.task_id in ids]
            if len(tasks) != 6 or not all(t.done for t in tasks):
                return None
            return {(t.task_id, t.node_id, t.worker_pid, t.start_time, t.end_time) for t in tasks}

        def runs_shown() -> set[tuple[Any, ...]]:
            return {(b.task_id, b.node_id, b.pid, b.start, b.end)
                    for lane in dash.view().timeline.lanes for b in lane.bars if b.task_id in ids}

        expected = wait_for(runs_in_state, what="the six tasks to be FINISHED in runtime.state",
                            interval=0.05)
        wait_for(lambda: runs_shown() == expected,
                 what=f"a bar per task, as runtime.state has it: {expected}")
        timeline = dash.view().timeline
        ours = [(lane, b) for lane in timeline.lanes for b in lane.bars if b.task_id in ids]
        # The same workers (a lane each), and one colour for the function.
        assert {(lane.node_id, lane.pid) for lane, _ in ours} == {(n, pid) for _, n, pid, _, _ in expected}
        assert len({b.colour for _, b in ours}) == 1
        # Drawn: runs that would overlap on screen share a bar, which counts them in data-runs.
        wait_for(lambda: sum(int(n) for n in re.findall(r'data-fn="timed" data-runs="(\d+)"',
                                                        dash.timeline.chart.value)) == 6,
                 what="the chart to draw the six runs")
        dash.timeline.zoom.value = 30.0   # the zoom redraws at once, and later updates keep it
        assert 'data-window="30"' in dash.timeline.chart.value
        wait_for(lambda: 'data-window="30"' in dash.timeline.chart.value and dash.statistics()["draws"] > 2,
                 what="updates to keep the chosen window")
    finally:
        dash.close()


def test_the_object_store_shows_a_put_as_the_largest_object(cluster: rt.ClusterInfo) -> None:
    dash = synced(Dashboard(interval=0.05))
    try:
        ref = rt.put(np.zeros(5 * 1024 * 1024 // 8))
        listed = wait_for(lambda: next((o for o in rt.state.list_objects(limit=None)
                                        if o.object_id == ref.hex()), None),
                          what="runtime.state to list the put", interval=0.05)
        top = wait_for(lambda: (v := dash.view().objects).largest and v.largest[0].object_id == ref.hex()
                       and v.largest[0], what="the put to be the largest object shown")
        assert top.size == listed.size >= 5 * 1024 * 1024
        assert top.holders == tuple(n[:6] for n in listed.locations) == (cluster.node_id[:6],)
        assert top.created_by == "rt.put"
        own = rt.get_runtime_context().get_worker_id()
        assert top.owner == ("unknown" if listed.owner_id is None else
                             "this kernel" if listed.owner_id == own else listed.owner_id[:8])
        # The node's store bytes come from its heartbeats: the put is in them soon.
        wait_for(lambda: dash.view().objects.nodes[0].used >= listed.size,
                 what="the node's store bytes to count the put")
        wait_for(lambda: f'data-bytes="{listed.size}"' in dash.objects.largest.value,
                 what="the largest-objects table to show the put's size")
        assert "rt.put" in dash.objects.largest.value
    finally:
        dash.close()


def test_close_unsubscribes_stops_the_refresher_and_frees_the_widget(
        cluster: rt.ClusterInfo, widget_threads: Callable[[], list[threading.Thread]]) -> None:
    assert widget_threads() == []
    dash = synced(Dashboard())
    assert len(widget_threads()) == 2
    parts = [dash, dash.futures.tiles["finished"], dash.nodes, dash.scheduler.chart]
    dash.close()
    assert widget_threads() == []          # close() returns once both threads are gone
    assert not dash.running and not dash.statistics()["subscribed"]
    assert all(p.comm is None for p in parts)   # every widget of the tree is closed
    dash.close()                           # idempotent
    ref = weakref.ref(dash)
    del dash, parts
    gc.collect()
    assert ref() is None, "something still holds a closed dashboard"


def test_text_fallbacks_are_readable(cluster: rt.ClusterInfo) -> None:
    dash = synced(Dashboard())
    try:
        text = pretty(dash)
        lines = text.splitlines()
        assert lines[0] == "cellray dashboard (live)"
        assert lines[1].startswith("Nodes: 1 alive of 1; CPU ")
        assert lines[2].startswith("Futures: pending ")
        assert "IPY_MODEL" not in text and "model_id" not in text
        bundle = dash._repr_mimebundle_()
        assert bundle["text/plain"] == text
        assert "application/vnd.jupyter.widget-view+json" in bundle
        assert "<table" in bundle["text/html"] and "cellray-dashboard" in bundle["text/html"]
        assert repr(dash).startswith("<cellray Dashboard (live): 1 nodes,")
    finally:
        dash.close()
    # Closed: IPython's formatters still get text and HTML (ipywidgets drops the bundle).
    data, _ = DisplayFormatter().format(dash)
    assert data["text/plain"].startswith("cellray dashboard (closed)")
    assert "Futures: pending" in data["text/plain"] and "<table" in data["text/html"]


def test_a_gcs_outage_shows_as_reconnecting_in_the_header_and_the_summary(
        cluster: rt.ClusterInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    dash = synced(Dashboard(interval=0.05))
    try:
        # What this process's GCS client reports during an outage (no GCS is killed here).
        monkeypatch.setattr(rt.state, "gcs_outage", lambda: 12.0)
        wait_for(lambda: "GCS reconnecting… (12 s)" in dash._header.value, timeout=30,
                 what="the header to say the GCS is away")
        assert "GCS reconnecting… (12 s): running work goes on" in dash.summary()
        monkeypatch.setattr(rt.state, "gcs_outage", lambda: None)
        wait_for(lambda: "reconnecting" not in dash._header.value, timeout=30,
                 what="the header back to normal")
    finally:
        dash.close()
