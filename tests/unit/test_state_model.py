"""runtime.state without a cluster: rows to dataclasses, and the subscription machinery.

The first part builds protobuf rows and checks the dataclasses (pure). The second drives
``Subscription`` against a scripted fake GCS on a real event-loop thread, the way
``CoreClient`` runs it, to check restarts, markers and closing without starting processes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import pytest

from runtime import state
from runtime.api import _context
from runtime.exceptions import ClientClosedError, ConnectionLostError
from runtime.protocol import common_pb2, gcs_pb2, node_pb2
from runtime.testing.wait import wait_for

T = TypeVar("T")

NODE = bytes(range(16))
NODE2 = bytes(range(16, 32))
TASK = bytes.fromhex("aa" * 16)
JOB = (1).to_bytes(4, "little")


# ---- rows ----------------------------------------------------------------------------------


def test_node_state_from_row_copies_load_and_gpus() -> None:
    row = gcs_pb2.NodeRow(node_id=NODE, address="127.0.0.1:7000", alive=True, pid=42,
                          hostname="box", start_time=100.0, last_heartbeat=105.5)
    row.labels["zone"] = "a"
    load = row.load
    load.total.update({"CPU": 2.0, "GPU": 1.0})
    load.available.update({"CPU": 1.0})
    load.queue_length, load.store_used, load.store_capacity, load.num_workers = 3, 10, 1000, 2
    load.cpu_percent, load.memory_used, load.memory_total = 12.5, 1 << 30, 4 << 30
    load.gpus.add(index=0, name="NVIDIA H100", memory_total=80 << 30, memory_used=1 << 30,
                  utilization=55.0)

    n = state.NodeState.from_row(row)

    assert n.node_id == NODE.hex() and n.address == "127.0.0.1:7000" and n.hostname == "box"
    assert n.alive and n.death_cause == "" and n.pid == 42
    assert n.resources_total == {"CPU": 2.0, "GPU": 1.0}
    assert n.resources_available == {"CPU": 1.0}
    assert (n.queue_length, n.store_used, n.store_capacity, n.num_workers) == (3, 10, 1000, 2)
    assert (n.cpu_percent, n.memory_used, n.memory_total) == (12.5, 1 << 30, 4 << 30)
    assert n.gpus == (state.GpuState(index=0, name="NVIDIA H100", memory_total=80 << 30,
                                     memory_used=1 << 30, utilization=55.0),)
    assert n.start_time == 100.0 and n.last_heartbeat == 105.5
    assert n.labels == {"zone": "a"}
    hash(n)  # frozen and hashable although it holds dicts
    with pytest.raises(AttributeError):
        n.alive = False  # type: ignore[misc]


def test_dead_node_keeps_its_cause() -> None:
    n = state.NodeState.from_row(gcs_pb2.NodeRow(node_id=NODE, alive=False, death_cause="stopped"))
    assert not n.alive and n.death_cause == "stopped"
    assert n.gpus == () and n.resources_total == {} and n.last_heartbeat is None


def test_task_state_from_row_with_times_duration_and_history() -> None:
    row = gcs_pb2.TaskRow(task_id=TASK, name="square", job_id=JOB, state="FINISHED", node_id=NODE,
                          worker_pid=4121, submit_time=10.0, start_time=10.5, end_time=12.0,
                          attempt=1)
    row.history.add(task_id=TASK, name="square", state="RUNNING", node_id=NODE, time=10.5, attempt=1)
    row.history.add(task_id=TASK, name="square", state="FINISHED", node_id=NODE, time=12.0, attempt=1)

    t = state.TaskState.from_row(row)

    assert t.task_id == TASK.hex() and t.name == "square" and t.job_id == JOB.hex()
    assert t.state == "FINISHED" and t.done
    assert t.node_id == NODE.hex() and t.worker_pid == 4121 and t.attempt == 1
    assert (t.submit_time, t.start_time, t.end_time) == (10.0, 10.5, 12.0)
    assert t.duration == pytest.approx(1.5)
    assert t.actor_id is None and t.detail == ""
    assert [e.state for e in t.history] == ["RUNNING", "FINISHED"]
    assert t.history[0].time == 10.5 and t.history[0].task_id == TASK.hex()
    assert "history" not in repr(t)  # long, and shown only when asked for


def test_task_that_never_ran_has_no_duration() -> None:
    queued = state.TaskState.from_row(gcs_pb2.TaskRow(task_id=TASK, state="SUBMITTED", submit_time=5.0))
    assert queued.duration is None and not queued.done
    assert queued.start_time is None and queued.end_time is None
    assert queued.node_id is None and queued.worker_pid is None and queued.job_id is None
    cancelled = state.TaskState.from_row(gcs_pb2.TaskRow(task_id=TASK, state="CANCELLED",
                                                         submit_time=5.0, end_time=6.0))
    assert cancelled.done and cancelled.duration is None
    running = state.TaskState.from_row(gcs_pb2.TaskRow(task_id=TASK, state="RUNNING",
                                                       start_time=5.0))
    assert running.duration is None


def test_failed_task_keeps_its_detail() -> None:
    t = state.TaskState.from_row(gcs_pb2.TaskRow(task_id=TASK, name="boom", state="FAILED",
                                                 detail="ValueError: no", start_time=1.0, end_time=1.0))
    assert t.done and t.detail == "ValueError: no" and t.duration == 0.0


def test_object_state_lists_locations_as_hex() -> None:
    oid = TASK + bytes(4)
    o = state.ObjectState.from_row(gcs_pb2.ObjectRow(object_id=oid, size=1 << 20,
                                                     locations=[NODE, NODE2], spilled=True))
    assert o == state.ObjectState(object_id=oid.hex(), size=1 << 20,
                                  locations=(NODE.hex(), NODE2.hex()), spilled=True, owner_id=None)


def test_job_state_from_row() -> None:
    j = state.JobState.from_row(gcs_pb2.JobRow(job_id=JOB, driver_pid=7, driver_host="box",
                                               start_time=1.0, alive=True))
    assert j == state.JobState(job_id="01000000", driver_pid=7, driver_host="box", alive=True,
                               start_time=1.0, end_time=None, entrypoint="")


def test_actor_state_from_row() -> None:
    actor = bytes.fromhex("bb" * 16)
    a = state.ActorState.from_row(gcs_pb2.ActorRow(
        actor_id=actor, class_name="Learner", name="", namespace="default", state="ALIVE",
        node_id=NODE, pid=99, num_restarts=1, max_restarts=-1, pending_calls=4, job_id=JOB,
        start_time=3.0, node_address="127.0.0.1:7000"))
    assert a.actor_id == actor.hex() and a.class_name == "Learner"
    assert a.name is None  # anonymous
    assert (a.state, a.node_id, a.pid) == ("ALIVE", NODE.hex(), 99)
    assert (a.num_restarts, a.max_restarts, a.pending_calls) == (1, -1, 4)
    assert a.death_cause == "" and a.job_id == JOB.hex() and not a.detached
    dead = state.ActorState.from_row(gcs_pb2.ActorRow(actor_id=actor, name="learner", state="DEAD",
                                                      death_cause="killed"))
    assert dead.name == "learner" and dead.death_cause == "killed" and dead.pid is None


def test_scheduler_event_from_task_event() -> None:
    ev = common_pb2.TaskEvent(task_id=TASK, name="f", state="SPILLED", node_id=NODE,
                              target_node_id=NODE2, scheduler="gs-1", detail="queue full",
                              time=7.5, job_id=JOB)
    e = state.SchedulerEvent.from_proto(ev)
    assert e == state.SchedulerEvent(task_id=TASK.hex(), name="f", state="SPILLED",
                                     node_id=NODE.hex(), target_node_id=NODE2.hex(),
                                     scheduler="gs-1", detail="queue full", time=7.5,
                                     job_id=JOB.hex(), attempt=0, worker_pid=None, actor_id=None)
    infeasible = state.SchedulerEvent.from_proto(common_pb2.TaskEvent(task_id=TASK, state="INFEASIBLE"))
    assert infeasible.target_node_id is None and infeasible.time is None


def test_output_lines_from_log_lines() -> None:
    log = node_pb2.LogLines(task_id=TASK, name="f", pid=12, stderr=True, lines=["a", "b"],
                            origin="cell-3")
    out = state.OutputLines.from_proto(log)
    assert out == state.OutputLines(task_id=TASK.hex(), name="f", pid=12, stream="stderr",
                                    lines=("a", "b"), origin="cell-3")
    assert out.text == "a\nb\n"
    assert state.OutputLines.from_proto(node_pb2.LogLines(task_id=TASK)).stream == "stdout"


@pytest.mark.parametrize(("table", "row", "cls"), [
    ("nodes", gcs_pb2.NodeRow(node_id=NODE), state.NodeState),
    ("jobs", gcs_pb2.JobRow(job_id=JOB), state.JobState),
    ("tasks", gcs_pb2.TaskRow(task_id=TASK), state.TaskState),
    ("objects", gcs_pb2.ObjectRow(object_id=TASK + bytes(4)), state.ObjectState),
    ("actors", gcs_pb2.ActorRow(actor_id=TASK), state.ActorState),
    ("events", common_pb2.TaskEvent(task_id=TASK, state="SCHEDULED"), state.SchedulerEvent),
])
def test_decode_row_for_every_table(table: str, row: Any, cls: type) -> None:
    assert table in state.TABLES
    assert isinstance(state.decode_row(table, row.SerializeToString()), cls)


def test_decode_row_rejects_other_tables() -> None:
    with pytest.raises(ValueError, match="functions"):
        state.decode_row("functions", b"")


def test_change_of_pub_messages() -> None:
    row = gcs_pb2.TaskRow(task_id=TASK, state="RUNNING")
    snap = state._change_of(gcs_pb2.PubMessage(table="tasks", key=TASK, value=row.SerializeToString(),
                                               snapshot=True))
    assert snap.table == "tasks" and snap.key == TASK.hex() and snap.snapshot and not snap.deleted
    assert isinstance(snap.value, state.TaskState) and snap.value.state == "RUNNING"
    done = state._change_of(gcs_pb2.PubMessage(snapshot_done=True))
    assert (done.table, done.value, done.snapshot_done, done.deleted) == ("", None, True, False)
    gone = state._change_of(gcs_pb2.PubMessage(table="objects", key=b"\x01", deleted=True))
    assert gone.deleted and gone.value is None and gone.key == "01" and not gone.snapshot


# ---- argument checks that need no connection ------------------------------------------------


@pytest.fixture
def not_connected() -> None:
    if _context.peek() is not None:
        pytest.skip("a cluster connection is open in this process")


@pytest.mark.parametrize("call", [
    state.list_nodes, state.list_tasks, lambda: state.get_task("aa" * 16), state.list_objects,
    state.list_jobs, state.list_actors, state.list_events, state.summarize_tasks,
    lambda: state.subscribe(["tasks"], print), lambda: state.add_output_handler(print),
    lambda: state.add_task_event_handler(print), lambda: state.set_origin_provider(None),
])
def test_every_function_needs_init(not_connected: None, call: Callable[[], object]) -> None:
    with pytest.raises(RuntimeError, match=r"call runtime\.init\(\) first"):
        call()


def test_removing_handlers_without_a_connection_does_nothing(not_connected: None) -> None:
    state.remove_output_handler(print)
    state.remove_task_event_handler(print)


@pytest.mark.parametrize(("tables", "match"), [
    (["tasks", "functions"], "functions"), ([], "one or more"), (["nope"], "nope"),
])
def test_subscribe_rejects_unknown_tables(tables: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        state.subscribe(tables, print)


def test_bad_arguments_are_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="limit"):
        state.list_tasks(limit=0)
    with pytest.raises(ValueError, match="limit"):
        state.list_events(limit=-1)
    with pytest.raises(ValueError, match='"state" or "name"'):
        state.summarize_tasks(by="node")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="hex"):
        state.get_task("not hex")
    with pytest.raises(TypeError, match="ObjectRef"):
        state.get_task(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        state.subscribe(["tasks"], "print")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pending"):
        state.subscribe(["tasks"], print, max_pending=0)


# ---- the subscription machinery against a scripted GCS --------------------------------------

Script = list[Any]  # PubMessages to yield, then an exception to raise (or nothing: stay open)


class FakeGcs:
    """``subscribe`` plays one script per call; a script without an error then stays open."""

    def __init__(self, scripts: Iterable[Script]) -> None:
        self.scripts = list(scripts)
        self.calls = 0
        self.closed: asyncio.Event | None = None

    async def subscribe(self, tables: Iterable[str]) -> AsyncIterator[gcs_pb2.PubMessage]:
        if self.closed is None:
            self.closed = asyncio.Event()
        if self.closed.is_set():
            raise ClientClosedError("closed")
        script = self.scripts[self.calls] if self.calls < len(self.scripts) else []
        self.calls += 1
        for item in script:
            if isinstance(item, BaseException):
                raise item
            yield item
        await self.closed.wait()  # a live stream with nothing new, until the client closes
        raise ClientClosedError("closed during the call")

    async def close(self) -> None:
        if self.closed is not None:
            self.closed.set()


class FakeClient:
    """What ``Subscription`` uses of ``CoreClient``: ``gcs``, ``run``, ``closed``, and an IO loop."""

    def __init__(self, gcs: FakeGcs) -> None:
        self.gcs = gcs
        self.closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        """Like ``CoreClient.close``: mark closed, close the GCS client, stop the loop."""
        self.closed = True
        self.run(self.gcs.close(), 5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()


@pytest.fixture
def make_sub() -> Any:
    made: list[tuple[FakeClient, state.Subscription]] = []

    def make(scripts: Iterable[Script], callback: Callable[[state.Change], object],
             max_pending: int = 10_000) -> tuple[FakeClient, state.Subscription]:
        client = FakeClient(FakeGcs(scripts))
        sub = state.Subscription(client, ("tasks",), callback, max_pending)  # type: ignore[arg-type]
        sub._start()
        made.append((client, sub))
        return client, sub

    yield make
    for client, sub in made:
        sub.close()
        if not client.closed:
            client.close()


def _task_msg(state_: str, *, snapshot: bool = False) -> gcs_pb2.PubMessage:
    row = gcs_pb2.TaskRow(task_id=TASK, name="f", state=state_)
    return gcs_pb2.PubMessage(table="tasks", key=TASK, value=row.SerializeToString(), snapshot=snapshot)


def _describe(c: state.Change) -> str:
    if c.reset:
        return "reset"
    if c.snapshot_done:
        return "done"
    if c.value is None:
        return "deleted"
    assert isinstance(c.value, state.TaskState)
    return ("snap:" if c.snapshot else "") + c.value.state


def test_snapshot_marker_then_changes_in_order(make_sub: Any) -> None:
    seen: list[str] = []
    script = [_task_msg("SUBMITTED", snapshot=True), gcs_pb2.PubMessage(snapshot_done=True),
              _task_msg("RUNNING"), _task_msg("FINISHED"),
              gcs_pb2.PubMessage(table="tasks", key=TASK, deleted=True)]
    _, sub = make_sub([script], lambda c: seen.append(_describe(c)))
    wait_for(lambda: len(seen) >= 5, what="five changes")
    assert seen == ["snap:SUBMITTED", "done", "RUNNING", "FINISHED", "deleted"]
    assert sub.active and sub.restarts == 0


def test_a_dropped_stream_starts_over_with_a_reset_and_a_fresh_snapshot(make_sub: Any) -> None:
    seen: list[str] = []
    dropped = ConnectionLostError("the GCS disconnected this client: fell behind")  # RESOURCE_EXHAUSTED
    first = [gcs_pb2.PubMessage(snapshot_done=True), _task_msg("RUNNING"), dropped]
    second = [_task_msg("FINISHED", snapshot=True), gcs_pb2.PubMessage(snapshot_done=True)]
    client, sub = make_sub([first, second], lambda c: seen.append(_describe(c)))
    wait_for(lambda: len(seen) >= 5, what="the changes of two subscriptions")
    assert seen == ["done", "RUNNING", "reset", "snap:FINISHED", "done"]
    assert sub.restarts == 1 and client.gcs.calls == 2


def test_a_failing_callback_does_not_end_the_subscription(make_sub: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def callback(c: state.Change) -> None:
        seen.append(_describe(c))
        if c.snapshot_done:
            raise KeyError("boom")

    make_sub([[gcs_pb2.PubMessage(snapshot_done=True), _task_msg("RUNNING")]], callback)
    wait_for(lambda: len(seen) >= 2, what="the change after the failing call")
    assert seen == ["done", "RUNNING"]
    assert any("callback" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_slow_callback_holds_the_stream_back_and_loses_nothing(make_sub: Any) -> None:
    release = threading.Event()
    seen: list[str] = []
    waiting: list[int] = []

    made: list[state.Subscription] = []

    def slow(c: state.Change) -> None:
        seen.append(_describe(c))
        wait_for(lambda: made, what="make_sub to return")
        waiting.append(made[0]._queue.qsize())
        release.wait(10)

    states = ["RUNNING", "RETRYING", "RUNNING", "FINISHED"]
    script = [gcs_pb2.PubMessage(snapshot_done=True), *(_task_msg(s) for s in states)]
    client, sub = make_sub([script], slow, max_pending=1)
    made.append(sub)
    wait_for(lambda: seen == ["done"] and sub._queue.qsize() == 1,
             what="the first change's callback to block, and one more change to wait")
    release.set()
    wait_for(lambda: len(seen) == 5, what="every change after the callback caught up")
    assert seen == ["done", *states]
    assert max(waiting) <= 1  # never more than max_pending waited
    assert sub.restarts == 0 and client.gcs.calls == 1


def test_close_is_idempotent_and_stops_deliveries(make_sub: Any) -> None:
    seen: list[str] = []
    _client, sub = make_sub([[gcs_pb2.PubMessage(snapshot_done=True)]],
                            lambda c: seen.append(_describe(c)))
    wait_for(lambda: seen == ["done"], what="the snapshot marker")
    sub.close()
    assert not sub.active
    sub.close()
    assert "closed" in repr(sub)


def test_close_from_the_callback(make_sub: Any) -> None:
    seen: list[str] = []
    holder: list[state.Subscription] = []

    def callback(c: state.Change) -> None:
        seen.append(_describe(c))
        wait_for(lambda: holder, what="the subscription object")
        holder[0].close()

    _, sub = make_sub([[gcs_pb2.PubMessage(snapshot_done=True), _task_msg("RUNNING")]], callback)
    holder.append(sub)
    wait_for(lambda: not sub.active, what="the subscription to end")
    assert seen == ["done"]


def test_closing_the_client_ends_the_subscription(make_sub: Any) -> None:
    seen: list[str] = []
    client, sub = make_sub([[gcs_pb2.PubMessage(snapshot_done=True)]], lambda c: seen.append(_describe(c)))
    wait_for(lambda: seen == ["done"], what="the snapshot marker")
    client.close()
    wait_for(lambda: not sub.active, what="the subscription to end with its client")
    sub.close()  # harmless afterwards
