"""GcsState, driven with plain calls and a fake clock: no sockets, no threads, no sleeps."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import pytest

from runtime.exceptions import ClientClosedError, NodeDiedError
from runtime.gcs.state import Change, GcsState, InvalidRequestError, shard_of
from runtime.gcs.storage import InMemoryStorage, Storage
from runtime.protocol import common_pb2, gcs_pb2


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingStorage(InMemoryStorage):
    """InMemoryStorage that remembers every instance, so tests can look inside shards."""

    instances: list[RecordingStorage] = []

    def __init__(self) -> None:
        super().__init__()
        RecordingStorage.instances.append(self)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> GcsState:
    return GcsState(num_shards=4, clock=clock)


def node_id(i: int) -> bytes:
    return i.to_bytes(16, "big")


def event(task: int, state: str, time: float = 0.0, **fields: Any) -> common_pb2.TaskEvent:
    return common_pb2.TaskEvent(task_id=task.to_bytes(16, "big"), state=state, time=time, **fields)


def task_row(state: GcsState, task: int) -> gcs_pb2.TaskRow | None:
    raw = state.get("tasks", task.to_bytes(16, "big"))
    return None if raw is None else gcs_pb2.TaskRow.FromString(raw)


# ---- sharding and storage ----

def test_in_memory_storage_follows_the_protocol() -> None:
    storage = InMemoryStorage()
    assert isinstance(storage, Storage)
    storage.put("kv", b"a", b"1")
    storage.delete("kv", b"missing")
    assert list(storage.items("kv")) == [(b"a", b"1")]
    storage.delete("kv", b"a")
    assert storage.get("kv", b"a") is None
    storage.close()
    with pytest.raises(ClientClosedError, match="closed"):
        storage.get("kv", b"a")


def test_keys_spread_over_shards_and_the_mapping_is_stable() -> None:
    keys = [i.to_bytes(16, "big") for i in range(400)]
    counts = [0] * 4
    for key in keys:
        counts[shard_of(key, 4)] += 1
    assert all(count > 50 for count in counts), counts
    # crc32, not Python's salted hash: the same key always lands on the same shard.
    assert shard_of(b"node-1", 4) == zlib.crc32(b"node-1") % 4


def test_each_shard_has_its_own_storage_and_holds_its_keys() -> None:
    RecordingStorage.instances = []
    state = GcsState(num_shards=3, storage_factory=RecordingStorage)
    assert len(RecordingStorage.instances) == 3
    keys = [bytes([i]) * 4 for i in range(30)]
    for key in keys:
        state.put("kv", key, b"v")
    for index, shard in enumerate(RecordingStorage.instances):
        held = {k for k, _ in shard.items("kv")}
        assert held == {k for k in keys if shard_of(k, 3) == index}
    assert sorted(k for k, _ in state.items("kv")) == sorted(keys)


def test_put_only_if_absent_and_changes_are_recorded(state: GcsState) -> None:
    assert state.put("kv", b"k", b"v1") == (True, b"")
    assert state.put("kv", b"k", b"v2", only_if_absent=True) == (False, b"v1")
    assert state.put("kv", b"k", b"v3") == (True, b"v1")
    assert state.take_changes() == [Change("kv", b"k", b"v1"), Change("kv", b"k", b"v3")]
    assert state.take_changes() == []


@pytest.mark.parametrize("call", [
    lambda s: s.get("no-such-table", b"k"),
    lambda s: s.items("no-such-table"),
    lambda s: s.put("nodes", b"k", b"v"),
    lambda s: s.put("kv", b"", b"v"),
    lambda s: s.register_node(gcs_pb2.NodeRow()),
    lambda s: s.heartbeat(b"", common_pb2.NodeLoad()),
    lambda s: s.export_function(gcs_pb2.FunctionRow(name="f")),
    lambda s: s.report_events([common_pb2.TaskEvent(state="RUNNING")], []),
    lambda s: s.report_events([], [gcs_pb2.ObjectLocationUpdate(object_id=b"o")]),
    lambda s: s.put_actor(gcs_pb2.ActorRow(class_name="C")),
    lambda s: s.claim_actor_name("", "n", b"v"),
    lambda s: s.claim_actor_name("ns", "", b"v"),
    lambda s: s.claim_actor_name("ns", "n", b""),
    lambda s: s.lookup_actor_name("ns", ""),
    lambda s: s.release_actor_name("", "n"),
    lambda s: s.register_scheduler("gs-0", ""),
    lambda s: s.deregister_scheduler(""),
])
def test_malformed_requests_raise_invalid_request(state: GcsState,
                                                  call: Callable[[GcsState], object]) -> None:
    with pytest.raises(InvalidRequestError):
        call(state)
    assert state.take_changes() == []


# ---- actors, actor names, scheduler replicas ----

def test_actor_rows_and_names_are_typed_and_every_change_is_recorded(state: GcsState) -> None:
    row = gcs_pb2.ActorRow(actor_id=b"a" * 16, class_name="Counter", state="PENDING")
    assert state.get_actor(row.actor_id) is None
    state.put_actor(row)
    assert state.get_actor(row.actor_id) == row
    assert state.claim_actor_name("ns", "c", b"v1") == (True, b"")
    assert state.claim_actor_name("ns", "c", b"v2") == (False, b"v1")
    assert state.lookup_actor_name("ns", "c") == b"v1"
    assert state.lookup_actor_name("other", "c") is None
    assert state.release_actor_name("ns", "c") is True
    assert state.release_actor_name("ns", "c") is False
    assert state.lookup_actor_name("ns", "c") is None
    # the rows live where subscribers and the generic reads find them
    assert state.take_changes() == [
        Change("actors", row.actor_id, row.SerializeToString()),
        Change("kv", b"actor_name:ns:c", b"v1"),
        Change("kv", b"actor_name:ns:c", deleted=True),
    ]


def test_scheduler_replicas_register_and_list_sorted(state: GcsState) -> None:
    state.register_scheduler("gs-1", "h:2")
    state.register_scheduler("gs-0", "h:1")
    state.put("kv", b"unrelated", b"x")
    assert state.schedulers() == ["h:1", "h:2"]
    assert state.get("kv", b"scheduler:gs-0") == b"h:1"
    assert state.deregister_scheduler("gs-0") is True
    assert state.deregister_scheduler("gs-0") is False
    assert state.schedulers() == ["h:2"]


# ---- nodes ----

def test_register_and_heartbeat_update_the_node_row(state: GcsState, clock: FakeClock) -> None:
    state.register_node(gcs_pb2.NodeRow(node_id=node_id(1), address="127.0.0.1:7000"))
    clock.advance(2)
    assert state.heartbeat(node_id(1), common_pb2.NodeLoad(queue_length=3))
    row = gcs_pb2.NodeRow.FromString(state.get("nodes", node_id(1)) or b"")
    assert (row.alive, row.load.queue_length, row.last_heartbeat, row.start_time) == (True, 3, 1002.0, 1000.0)
    assert not state.heartbeat(node_id(9), common_pb2.NodeLoad())
    assert [c.table for c in state.take_changes()] == ["nodes", "nodes"]


def test_silent_nodes_are_marked_dead_by_the_clock(state: GcsState, clock: FakeClock) -> None:
    state.register_node(gcs_pb2.NodeRow(node_id=node_id(1)))
    state.register_node(gcs_pb2.NodeRow(node_id=node_id(2)))
    clock.advance(8)
    state.heartbeat(node_id(2), common_pb2.NodeLoad())
    assert state.check_dead_nodes(timeout_s=10) == []
    clock.advance(3)
    state.take_changes()
    dead = state.check_dead_nodes(timeout_s=10)
    assert [n.node_id for n in dead] == [node_id(1)]
    assert dead[0].death_cause.startswith("no heartbeat for 11.0 s")
    assert [(c.table, c.key) for c in state.take_changes()] == [("nodes", node_id(1))]
    assert dead[0].death_time == 1011.0
    assert state.check_dead_nodes(timeout_s=10) == []  # reported once


def test_a_node_declared_dead_is_fenced_for_good(state: GcsState, clock: FakeClock) -> None:
    """Issue 12: a node paused past the timeout woke up and took its old id back."""
    state.register_node(gcs_pb2.NodeRow(node_id=node_id(1), address="10.0.0.5:7001"))
    clock.advance(11)
    [dead] = state.check_dead_nodes(timeout_s=10)
    state.take_changes()
    fenced = (r"node 000000000000 \(10.0.0.5:7001\) was declared dead at .*"
              r"\(no heartbeat for 11.0 s \(timeout 10 s\)\): it must rejoin under a new id")
    with pytest.raises(NodeDiedError, match=fenced) as info:
        state.heartbeat(node_id(1), common_pb2.NodeLoad())
    assert (info.value.node_id, info.value.address) == (node_id(1).hex(), "10.0.0.5:7001")
    with pytest.raises(NodeDiedError, match="must rejoin under a new id"):
        state.register_node(gcs_pb2.NodeRow(node_id=node_id(1), address="10.0.0.5:7001"))
    clock.advance(100)
    with pytest.raises(NodeDiedError):  # for good, not for a while
        state.register_node(gcs_pb2.NodeRow(node_id=node_id(1)))
    row = gcs_pb2.NodeRow.FromString(state.get("nodes", node_id(1)) or b"")
    assert row == dead and not row.alive  # nothing was written: the row stays DEAD
    assert state.take_changes() == []
    state.register_node(gcs_pb2.NodeRow(node_id=node_id(2), address="10.0.0.5:7001"))  # its new id
    assert state.heartbeat(node_id(2), common_pb2.NodeLoad())
    assert not state.heartbeat(node_id(9), common_pb2.NodeLoad())  # unknown (a GCS without its tables)


def test_dead_ids_stay_fenced_across_a_restart_on_the_same_storage(clock: FakeClock) -> None:
    shards = [InMemoryStorage(), InMemoryStorage()]
    first = GcsState(num_shards=2, storage_factory=iter(shards).__next__, clock=clock)
    first.register_node(gcs_pb2.NodeRow(node_id=node_id(1)))
    first.unregister_node(node_id(1), "drained")
    again = GcsState(num_shards=2, storage_factory=iter(shards).__next__, clock=clock)
    with pytest.raises(NodeDiedError, match=r"\(drained\): it must rejoin"):
        again.heartbeat(node_id(1), common_pb2.NodeLoad())
    with pytest.raises(NodeDiedError):
        again.register_node(gcs_pb2.NodeRow(node_id=node_id(1)))


def test_unregister_keeps_the_row_marked_dead(state: GcsState, clock: FakeClock) -> None:
    state.register_node(gcs_pb2.NodeRow(node_id=node_id(1)))
    row = state.unregister_node(node_id(1), "drained")
    assert row is not None and (row.alive, row.death_cause, row.death_time) == (False, "drained", 1000.0)
    clock.advance(5)
    state.take_changes()
    again = state.unregister_node(node_id(1), "stopped")  # its first cause and time stay
    assert again is not None and (again.death_cause, again.death_time) == ("drained", 1000.0)
    assert state.take_changes() == []
    assert state.unregister_node(node_id(7)) is None
    assert state.check_dead_nodes(timeout_s=0) == []


# ---- jobs and functions ----

def test_jobs_get_sequential_little_endian_ids(state: GcsState, clock: FakeClock) -> None:
    ids = [state.register_job(gcs_pb2.JobRow(driver_pid=p)) for p in (10, 11, 12)]
    assert ids == [b"\x01\x00\x00\x00", b"\x02\x00\x00\x00", b"\x03\x00\x00\x00"]
    clock.advance(5)
    assert state.finish_job(ids[1]) and not state.finish_job(b"\x09\x00\x00\x00")
    job = gcs_pb2.JobRow.FromString(state.get("jobs", ids[1]) or b"")
    assert (job.alive, job.driver_pid, job.start_time, job.end_time) == (False, 11, 1000.0, 1005.0)


def test_a_function_is_written_once(state: GcsState) -> None:
    row = gcs_pb2.FunctionRow(function_id=b"h" * 20, name="f", pickled=b"first")
    assert state.export_function(row) is False
    assert state.export_function(gcs_pb2.FunctionRow(function_id=b"h" * 20, pickled=b"second")) is True
    assert [c.table for c in state.take_changes()] == ["functions"]
    got = state.get_function(b"h" * 20)
    assert got is not None and got.pickled == b"first"
    assert state.get_function(b"x" * 20) is None


# ---- tasks, events, objects ----

def test_task_events_update_the_row_and_its_bounded_history(state: GcsState) -> None:
    state.report_events([
        event(1, "SUBMITTED", 10.0, name="f", job_id=b"\x01\x00\x00\x00"),
        event(1, "QUEUED", 11.0, node_id=node_id(1), detail="waiting for 1 arg"),
        event(1, "RUNNING", 12.0, worker_pid=4121),
    ], [])
    row = task_row(state, 1)
    assert row is not None
    assert (row.state, row.name, row.node_id, row.worker_pid) == ("RUNNING", "f", node_id(1), 4121)
    assert (row.submit_time, row.start_time, row.detail) == (10.0, 12.0, "")
    for i in range(10):
        state.report_events([event(1, "QUEUED", 13.0 + i, detail=f"q{i}")], [])
    state.report_events([event(1, "FINISHED", 30.0)], [])
    row = task_row(state, 1)
    assert row is not None and (row.state, row.end_time) == ("FINISHED", 30.0)
    assert len(row.history) == 8
    assert [h.detail for h in row.history][-3:] == ["q8", "q9", ""]


def test_late_events_do_not_move_a_task_backwards(state: GcsState) -> None:
    state.report_events([event(1, "FINISHED", 20.0, attempt=0), event(1, "RUNNING", 19.0, attempt=0)], [])
    row = task_row(state, 1)
    assert row is not None and row.state == "FINISHED" and len(row.history) == 2
    state.report_events([event(1, "RUNNING", 25.0, attempt=1)], [])  # a retry does
    row = task_row(state, 1)
    assert row is not None and (row.state, row.attempt) == ("RUNNING", 1)


def test_a_home_nodes_late_spilled_event_does_not_undo_running_elsewhere(state: GcsState) -> None:
    state.report_events([event(1, "SUBMITTED"), event(1, "SCHEDULED"), event(1, "RUNNING")], [])
    state.report_events([event(1, "SPILLED")], [])  # the home's batch, later than the target's
    row = task_row(state, 1)
    assert row is not None and row.state == "RUNNING"
    assert [h.state for h in row.history][-1] == "SPILLED"  # kept in the history
    state.report_events([event(1, "RETRYING", attempt=1), event(1, "SPILLED", attempt=1)], [])
    row = task_row(state, 1)
    assert row is not None and (row.state, row.attempt) == ("SPILLED", 1)


def test_actor_rows_from_several_nodes_never_move_an_actor_backwards(state: GcsState) -> None:
    a = b"A" * 16

    def put(s: str, restarts: int = 0, node: bytes = b"n") -> bool:
        return state.put_actor(gcs_pb2.ActorRow(actor_id=a, state=s, num_restarts=restarts, node_id=node))

    assert put("ALIVE", node=b"r")
    assert not put("PENDING", node=b"h")  # the creator's first row, arriving late
    assert put("RESTARTING", restarts=1, node=b"h")
    assert not put("ALIVE", restarts=0, node=b"r")  # the old incarnation's row
    assert put("ALIVE", restarts=1, node=b"s")
    assert put("DEAD", restarts=1, node=b"s")
    assert not put("ALIVE", restarts=2, node=b"s")  # DEAD is final
    row = state.get_actor(a)
    assert row is not None and (row.state, row.node_id) == ("DEAD", b"s")


def test_a_bad_batch_applies_nothing(state: GcsState) -> None:
    with pytest.raises(InvalidRequestError, match=r"task_events\[1\].task_id"):
        state.report_events([event(1, "SUBMITTED"), common_pb2.TaskEvent(state="RUNNING")], [])
    assert task_row(state, 1) is None


def test_tasks_table_is_bounded_evicting_finished_tasks_first() -> None:
    state = GcsState(num_shards=2, max_tasks=3)
    state.report_events([event(1, "RUNNING"), event(2, "RUNNING"), event(3, "FINISHED")], [])
    state.take_changes()
    state.report_events([event(4, "SUBMITTED")], [])
    assert task_row(state, 3) is None and task_row(state, 1) is not None
    assert Change("tasks", (3).to_bytes(16, "big"), deleted=True) in state.take_changes()
    state.report_events([event(5, "SUBMITTED")], [])  # nothing finished: the oldest goes
    assert task_row(state, 1) is None
    assert len(state.items("tasks")) == 3


def test_decisions_are_logged_in_a_bounded_events_ring() -> None:
    state = GcsState(num_shards=4, max_events=5)
    state.report_events([event(i, s) for i in range(4) for s in ("SUBMITTED", "SPILLED", "SCHEDULED")], [])
    state.report_events([event(9, "INFEASIBLE", detail="needs 8 GPUs")], [])
    rows = state.items("events")
    assert [int.from_bytes(k, "big") for k, _ in rows] == [4, 5, 6, 7, 8]
    logged = [common_pb2.TaskEvent.FromString(v) for _, v in rows]
    assert [e.state for e in logged] == ["SPILLED", "SCHEDULED", "SPILLED", "SCHEDULED", "INFEASIBLE"]
    assert logged[-1].detail == "needs 8 GPUs"


def test_object_locations_are_added_and_removed(state: GcsState) -> None:
    oid = b"o" * 20
    state.report_events([], [gcs_pb2.ObjectLocationUpdate(object_id=oid, node_id=node_id(1), size=100),
                             gcs_pb2.ObjectLocationUpdate(object_id=oid, node_id=node_id(2)),
                             gcs_pb2.ObjectLocationUpdate(object_id=oid, node_id=node_id(2))])
    row = gcs_pb2.ObjectRow.FromString(state.get("objects", oid) or b"")
    assert (list(row.locations), row.size) == ([node_id(1), node_id(2)], 100)
    state.report_events([], [gcs_pb2.ObjectLocationUpdate(object_id=oid, node_id=node_id(1), removed=True)])
    row = gcs_pb2.ObjectRow.FromString(state.get("objects", oid) or b"")
    assert list(row.locations) == [node_id(2)]
    state.take_changes()
    state.report_events([], [gcs_pb2.ObjectLocationUpdate(object_id=oid, node_id=node_id(2), removed=True)])
    assert state.get("objects", oid) is None
    assert state.take_changes() == [Change("objects", oid, deleted=True)]


def test_counters_resume_from_persistent_storage() -> None:
    shards = [InMemoryStorage(), InMemoryStorage()]

    def reopen() -> Callable[[], Storage]:
        return iter(shards).__next__

    first = GcsState(num_shards=2, storage_factory=reopen())
    first.register_job(gcs_pb2.JobRow())
    first.report_events([event(1, "SPILLED")], [])
    second = GcsState(num_shards=2, storage_factory=reopen())
    assert second.register_job(gcs_pb2.JobRow()) == b"\x02\x00\x00\x00"
    second.report_events([event(2, "SPILLED")], [])
    assert [int.from_bytes(k, "big") for k, _ in second.items("events")] == [0, 1]
