"""The owner's side of task events (``runtime.api._task_events``): warnings find the origin
of the task they are about, once per origin; an actor's constructor returning is known at once."""

from __future__ import annotations

import pytest

from runtime.api._task_events import TaskEvents
from runtime.protocol import common_pb2, node_pb2

NEEDS = "Task train() needs {CPU: 1, GPU: 4} but no node has that much (this node has {CPU: 1})."


def _spec(task_id: bytes, origin: str) -> common_pb2.TaskSpec:
    return common_pb2.TaskSpec(task_id=task_id, name="train", origin=origin)


def _infeasible(task_id: bytes) -> common_pb2.TaskEvent:
    return common_pb2.TaskEvent(task_id=task_id, name="train", state="INFEASIBLE", detail=NEEDS)


def test_a_warning_goes_to_the_handler_with_the_origin_of_its_task() -> None:
    events = TaskEvents()
    got: list[node_pb2.LogLines] = []
    events.warning_handler = got.append
    events.submitted(_spec(b"t1", "cell-3"))
    assert events.on_event(_infeasible(b"t1")) is True  # a warning: the event handlers get it too
    [lines] = got
    assert (lines.origin, lines.stderr, list(lines.lines)) == ("cell-3", True, [f"Warning: {NEEDS}"])
    assert lines.task_id == b"t1" and lines.name == "train"


def test_a_warning_comes_once_per_origin() -> None:
    events = TaskEvents()
    got: list[node_pb2.LogLines] = []
    events.warning_handler = got.append
    for task_id, origin in ((b"t1", "cell-3"), (b"t2", "cell-3"), (b"t3", "cell-5")):
        events.submitted(_spec(task_id, origin))
        events.on_event(_infeasible(task_id))
    assert [lines.origin for lines in got] == ["cell-3", "cell-5"]


def test_without_a_handler_a_warning_is_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    events = TaskEvents()
    events.on_event(_infeasible(b"t1"))
    events.on_event(_infeasible(b"t2"))  # untagged tasks: one origin, ""
    assert capsys.readouterr().err == f"Warning: {NEEDS}\n"


def test_a_failing_handler_leaves_the_warning_printed(capsys: pytest.CaptureFixture[str]) -> None:
    def broken(lines: node_pb2.LogLines) -> None:
        raise RuntimeError("boom")

    events = TaskEvents()
    events.warning_handler = broken
    events.on_event(_infeasible(b"t1"))
    assert capsys.readouterr().err == f"Warning: {NEEDS}\n"


def test_a_returned_constructor_makes_its_actor_started_and_is_no_warning() -> None:
    events = TaskEvents()
    got: list[node_pb2.LogLines] = []
    events.warning_handler = got.append
    assert not events.started(b"a1")
    done = common_pb2.TaskEvent(task_id=b"c1", name="Learner.__init__", state="FINISHED", actor_id=b"a1")
    assert events.on_event(done) is False
    assert events.started(b"a1") and not events.started(b"a2") and not got
