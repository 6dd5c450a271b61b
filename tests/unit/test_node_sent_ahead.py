"""What the node reports about tasks sent ahead to busy workers, and actor rows between
transitions. Pure: the local scheduler and its parts driven by events, no processes.

A task sent ahead (pipelining) is SENT_AHEAD until its worker begins to run it: when the
task before it ends (it takes that one's resources), or at once when every task on the
worker's stack waits in ``get`` (the worker runs what it was sent nested, in order). It is
RUNNING from then on, and only then, so its start time is when it began to execute.
"""

from __future__ import annotations

from runtime.node.actions import Action, PutActor
from runtime.node.actor_rows import ActorRows
from runtime.node.actors import Actor
from runtime.node.tasks import Phase, Task
from runtime.protocol import common_pb2
from runtime.protocol.states import ActorState, TaskState
from tests.unit.test_node_state import _block, _events, _finish, _node, _submit, _tid, _wid


def test_a_task_sent_ahead_runs_only_when_the_task_before_it_ends() -> None:
    s = _node(cpus=1, workers=1)
    for i in range(3):
        _submit(s, i)
    assert _events(s, _tid(0))[-1] == TaskState.RUNNING
    assert TaskState.RUNNING not in _events(s, _tid(1)) + _events(s, _tid(2))
    assert _events(s, _tid(1))[-1] == _events(s, _tid(2))[-1] == TaskState.SENT_AHEAD
    _finish(s, _tid(0))
    assert _events(s, _tid(1))[-1] == TaskState.RUNNING
    assert _events(s, _tid(2))[-1] == TaskState.SENT_AHEAD
    _finish(s, _tid(1))
    assert _events(s, _tid(2)).count(TaskState.RUNNING) == 1
    _finish(s, _tid(2))
    assert [_events(s, _tid(i)).count(TaskState.RUNNING) for i in range(3)] == [1, 1, 1]


def test_a_blocked_worker_runs_what_was_sent_ahead_nested_and_each_is_running_then() -> None:
    s = _node(cpus=1, workers=1)
    for i in range(3):
        _submit(s, i)
    _block(s, _tid(0))  # the worker runs task 1 nested now, then task 2
    assert _events(s, _tid(1))[-1] == TaskState.RUNNING
    assert _events(s, _tid(2))[-1] == TaskState.SENT_AHEAD
    _finish(s, _tid(1))
    assert _events(s, _tid(2))[-1] == TaskState.RUNNING
    _block(s, _tid(0), blocked=False)
    _block(s, _tid(0))  # blocking again starts nothing new: task 2 runs already
    _finish(s, _tid(2))
    _finish(s, _tid(0))
    assert _events(s, _tid(2)).count(TaskState.RUNNING) == 1
    w = s.workers.workers[_wid(0)]
    assert not w.frames and not w.queued and w.state == "IDLE"


def _actor(pending: int) -> Actor:
    spec = common_pb2.TaskSpec(task_id=b"a" * 16, actor_id=b"a" * 16, actor_creation=True)
    actor = Actor(b"a" * 16, spec, {"class_name": "Keeper"}, state=ActorState.ALIVE, worker_id=b"w" * 16)
    for i in range(pending):
        call = common_pb2.TaskSpec(task_id=bytes([i]) * 16, actor_id=actor.actor_id)
        actor.in_flight[call.task_id] = Task(call, {}, set(), phase=Phase.RUNNING)
    return actor


def test_calls_returning_write_the_actor_row_once_per_heartbeat() -> None:
    out: list[Action] = []
    rows = ActorRows(b"n" * 16, out.append)
    actor = _actor(pending=5)
    rows.write(actor)  # a transition: written at once
    assert [a.row.pending_calls for a in out if isinstance(a, PutActor)] == [5]
    for tid in list(actor.in_flight):
        del actor.in_flight[tid]
        rows.changed(actor.actor_id)  # five calls return: no row yet
    assert len(out) == 1
    assert rows.write_changed({actor.actor_id: actor}.get) == 1  # the heartbeat: one row
    assert [a.row.pending_calls for a in out if isinstance(a, PutActor)] == [5, 0]
    assert rows.write_changed({actor.actor_id: actor}.get) == 0  # nothing changed since


def test_a_transition_row_carries_the_count_and_dead_or_elsewhere_actors_are_left_alone() -> None:
    out: list[Action] = []
    rows = ActorRows(b"n" * 16, out.append)
    actor = _actor(pending=0)
    rows.changed(actor.actor_id)
    rows.write(actor)  # a transition after the change: its row says it already
    assert rows.write_changed({actor.actor_id: actor}.get) == 0
    rows.changed(actor.actor_id)
    actor.state = ActorState.DEAD  # its last row is final
    assert rows.write_changed({actor.actor_id: actor}.get) == 0
    actor.state, actor.host_node = ActorState.ALIVE, b"m" * 16  # lives on another node
    rows.changed(actor.actor_id)
    assert rows.write_changed({actor.actor_id: actor}.get) == 0
    assert len(out) == 1
