"""HTML and SVG from the model's views: escaped, and drawing what the view says."""

from __future__ import annotations

from runtime.state import SchedulerEvent
from widgets.render import decision_chart, decisions_table, fmt_duration, format_bytes, tasks_table
from widgets.views import ActorRowView, ActorsView, NodeSeries, SchedulerView, TaskRowView

EVIL = '<img src=x onerror="alert(1)">'


def test_strings_from_the_cluster_are_escaped() -> None:
    row = TaskRowView(task_id="aa", name=EVIL, state="FAILED", node="n1", duration=0.5,
                      why=f"ValueError: {EVIL}", attempt=0)
    out = tasks_table([row])
    assert "<img" not in out and "&lt;img" in out
    ev = SchedulerEvent(task_id="aa", name=EVIL, state="SPILLED", node_id="aa" * 16,
                        target_node_id="bb" * 16, scheduler=EVIL, detail=EVIL, time=1.0)
    view = SchedulerView(5.0, 60.0, (NodeSeries(EVIL, (0,), (0,), 0, 0),), (ev,))
    assert "<img" not in decisions_table(view) and "<img" not in decision_chart(view)


def test_tables_say_when_they_are_empty() -> None:
    assert "no tasks yet" in tasks_table([])
    view = SchedulerView(5.0, 60.0, (), ())
    assert "no spills" in decisions_table(view)
    assert "no decisions yet" in decision_chart(view)


def test_chart_stacks_local_received_spilled_on_a_shared_scale() -> None:
    view = SchedulerView(5.0, 20.0, (
        NodeSeries("n1", (0, 2, 0, 4), (0, 0, 1, 0), 6, 1),
        NodeSeries("n2", (0, 0, 0, 0), (0, 0, 0, 0), 0, 0, received=(0, 0, 1, 3), total_received=4)), ())
    svg = decision_chart(view)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<title>") == 5      # n1: 2 local, 1 spilled; n2: 2 received
    assert "<title>3 received</title>" in svg and "<title>4 local</title>" in svg
    assert "6 local" in svg and "1 spilled" in svg and "4 received" in svg
    assert "peak 4 per 5 s" in svg


def test_actor_rows() -> None:
    from widgets.render import actors_table
    row = ActorRowView("ac", "Learner", "learner", "ALIVE", "n1", "0/2", 3, "")
    out = actors_table(ActorsView({"ALIVE": 1}, (row,)))
    assert "Learner" in out and "learner" in out and ">3<" in out


def test_formatting() -> None:
    assert (format_bytes(512), format_bytes(1536), format_bytes(3 * 1024 ** 3)) == (
        "512 B", "1.5 KiB", "3.0 GiB")
    assert (fmt_duration(None), fmt_duration(0.0048), fmt_duration(1.25), fmt_duration(600)) == \
        ("", "4.8 ms", "1.2 s", "10 min")
