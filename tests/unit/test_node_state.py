"""LocalScheduler, the node's pure state, driven by method calls; decisions read from the
actions it makes. No sockets, no threads, no sleeps: a fake store and a fake clock."""

from __future__ import annotations

from collections import Counter
from typing import Any

from runtime import _ids
from runtime.config import Settings
from runtime.exceptions import (
    NodeDiedError,
    ObjectLostError,
    TaskCancelledError,
    WorkerCrashedError,
)
from runtime.node.actions import (
    Action,
    KillWorker,
    ObjectLocation,
    ReportEvent,
    ReportHome,
    Send,
    Spill,
    SpillReason,
    StartWorker,
    StopWorker,
)
from runtime.node.state import LocalScheduler
from runtime.protocol import codec, common_pb2, node_pb2

NODE, PEER, DRIVER = b"N" * 16, b"P" * 16, b"D" * 16


class Store:
    """The shared-memory store, reduced to what LocalScheduler calls; it records frees."""

    def __init__(self) -> None:
        self.sealed: list[bytes] = []
        self.freed: list[bytes] = []
        self.pins: Counter[bytes] = Counter()

    def seal(self, oid: bytes, size: int) -> None:
        self.sealed.append(oid)

    def locate(self, oid: bytes) -> str:
        return "/shm/" + oid.hex()

    def pin(self, oid: bytes) -> None:
        self.pins[oid] += 1

    def unpin(self, oid: bytes) -> None:
        self.pins[oid] -= 1

    def free(self, oid: bytes) -> None:
        self.freed.append(oid)


def _encode(err: BaseException) -> bytes:
    return codec.serialize(err, error=True).to_bytes()


def _wid(i: int) -> bytes:
    return bytes([1, i]) + b"w" * 14


def _cid(i: int) -> bytes:
    """The session (client) id of worker ``i``."""
    return bytes([2, i]) + b"c" * 14


def _tid(i: int) -> bytes:
    return bytes([3, i]) + b"t" * 14


def _ret(i: int) -> bytes:
    return _ids.object_id(_tid(i), 1)


def _add_worker(s: Node, i: int) -> None:
    s.worker_starting(_wid(i), counted=False)
    s.connect(_cid(i), "worker", 100 + i, _wid(i))


class Node(LocalScheduler):
    """LocalScheduler with the actions made since the last ``outbox.clear()``, in order."""

    def __init__(self, node_id: bytes, resources: dict[str, float], store: Store,
                 *args: Any, **kw: Any) -> None:
        super().__init__(node_id, resources, store, *args, **kw)
        self.seen: list[Action] = []
        self._store = store

    @property
    def outbox(self) -> list[Action]:
        self.seen.extend(self.take_actions())
        return self.seen

    @property
    def store(self) -> Store:
        return self._store


#: The defaults every test node runs with (tests override single fields).
DEFAULTS = Settings()


def _node(cpus: float = 1, workers: int = 0, t: list[float] | None = None, **kw: Any) -> Node:
    clock = (lambda: t[0]) if t is not None else (lambda: 0.0)
    s = Node(NODE, {"CPU": float(cpus)}, Store(), _encode,
                  settings=Settings(**kw), clock=clock)
    s.connect(DRIVER, "driver", 1)
    for i in range(workers):
        _add_worker(s, i)
    s.outbox.clear()
    return s


def _spec(i: int, cpu: float = 1.0, *, parent: int | None = None, max_retries: int = 0,
          arg_refs: tuple[bytes, ...] = (), spill_count: int = 0, **res: float) -> common_pb2.TaskSpec:
    spec = common_pb2.TaskSpec(task_id=_tid(i), name=f"f{i}", num_returns=1, owner_id=DRIVER,
                               function_id=b"fn" * 10,
                               max_retries=max_retries, spill_count=spill_count,
                               arg_refs=list(arg_refs))
    if parent is not None:
        spec.parent_task_id = _tid(parent)
    spec.resources.update({"CPU": cpu, **res})
    return spec


def _submit(s: Node, i: int, cpu: float = 1.0, **kw: Any) -> bytes:
    s.submit(DRIVER, _spec(i, cpu, **kw))
    return _tid(i)


def _ops(s: Node, kind: str) -> list[tuple[bytes, Any]]:
    """(client id, op body) of every SEND of NodeOp kind ``kind`` in the outbox."""
    return [(a.client_id, getattr(a.op, kind)) for a in s.outbox
            if isinstance(a, Send) and a.op.WhichOneof("op") == kind]


def _acts(s: Node, kind: type[Any]) -> list[Any]:
    return [a for a in s.outbox if isinstance(a, kind)]


def _spills(s: Node) -> list[tuple[bytes, Any]]:
    """(task id, ScheduleRequest) of every Spill action."""
    return [(a.task_id, a.request) for a in _acts(s, Spill)]


def _reports(s: Node) -> list[tuple[str, Any]]:
    """(home address, ReportResultsRequest) of every ReportHome action."""
    return [(a.address, a.request) for a in _acts(s, ReportHome)]


def _reap(s: Node, t: list[float], idle_s: float) -> list[bytes]:
    """The workers ``reap_idle`` stops when idling ``idle_s`` seconds is enough: the node
    runs with the default ``idle_worker_s``, so its clock is shifted by the difference."""
    now, before = t[0], len(s.outbox)
    t[0] = now - idle_s + DEFAULTS.idle_worker_s
    try:
        s.reap_idle()
    finally:
        t[0] = now
    return [a.worker_id for a in s.outbox[before:] if isinstance(a, StopWorker)]


def _executed(s: Node) -> list[tuple[bytes, bytes]]:
    """(worker client id, task id) of every task sent to a worker, in order."""
    return [(c, ex.spec.task_id) for c, ex in _ops(s, "execute")]


def _events(s: Node, task_id: bytes) -> list[str]:
    return [a.event.state for a in s.outbox if isinstance(a, ReportEvent) and a.event.task_id == task_id]


def _client_of(s: Node, task_id: bytes) -> bytes:
    return s.workers.workers[s.tasks[task_id].worker_id].client_id


def _finish(s: Node, task_id: bytes, value: bytes = b"v", **data: Any) -> None:
    """The worker running ``task_id`` reports its one return value."""
    client = _client_of(s, task_id)
    ret = common_pb2.ObjectData(object_id=_ids.object_id(task_id, 1), size=len(value), **data)
    if "shm_path" not in data:
        ret.inline = value
    s.result(client, node_pb2.TaskResult(task_id=task_id, returns=[ret]))


def _block(s: Node, task_id: bytes, blocked: bool = True, waiting_on: tuple[bytes, ...] = ()) -> None:
    s.blocked(_client_of(s, task_id),
              node_pb2.BlockedState(blocked=blocked, task_id=task_id, waiting_on=list(waiting_on)))


def _error_sent(s: Node, oid: bytes) -> BaseException:
    """The error the owner received as the value of ``oid``."""
    blobs = [o.inline for c, o in _ops(s, "object") if c == DRIVER and o.object_id == oid]
    assert len(blobs) == 1, f"expected one object op for {oid.hex()}, got {len(blobs)}"
    assert codec.is_error(blobs[0])
    err = codec.deserialize(blobs[0])
    assert isinstance(err, BaseException)
    return err


# ---- scheduling ------------------------------------------------------------------------


def test_tasks_of_one_shape_run_in_submission_order() -> None:
    s = _node(cpus=2, workers=2)
    _submit(s, 9, cpu=2)  # holds both CPUs; another shape, so nothing is sent ahead to it
    for i in range(3):
        _submit(s, i)
    assert [t for _, t in _executed(s)] == [_tid(9)]
    s.outbox.clear()
    _finish(s, _tid(9))
    assert [t for _, t in _executed(s)] == [_tid(0), _tid(1), _tid(2)]


def test_a_shape_waiting_for_resources_does_not_block_another_shape() -> None:
    s = _node(cpus=2, workers=2)
    _submit(s, 0)
    _submit(s, 1, cpu=2)  # cannot run while task 0 holds a CPU
    _submit(s, 2)
    assert [t for _, t in _executed(s)] == [_tid(0), _tid(2)]
    assert s.tasks[_tid(1)].phase == "READY"


def test_a_task_needing_more_than_available_runs_when_resources_free() -> None:
    s = _node(cpus=2, workers=2)
    _submit(s, 0)
    _submit(s, 1, cpu=2)
    assert [t for _, t in _executed(s)] == [_tid(0)]
    assert s.resources.available["CPU"] == 1.0
    s.outbox.clear()
    _finish(s, _tid(0))
    assert [t for _, t in _executed(s)] == [_tid(1)]
    assert s.resources.available["CPU"] == 0.0


def test_ten_ready_tasks_on_two_cpus_start_exactly_two_workers() -> None:
    s = _node(cpus=2, max_starting_workers=8)  # bounded by what can run, not by max_starting
    for i in range(10):
        _submit(s, i)
    assert len(_acts(s, StartWorker)) == 2
    assert s.workers.starting == 2
    assert _executed(s) == []
    _submit(s, 10)
    assert len(_acts(s, StartWorker)) == 2


def test_worker_starts_are_bounded_by_max_starting() -> None:
    s = _node(cpus=8, max_starting_workers=3)
    for i in range(10):
        _submit(s, i)
    assert len(_acts(s, StartWorker)) == 3


def test_no_worker_is_started_for_a_task_that_cannot_run_now() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    _submit(s, 1, cpu=0.5)  # another shape (not sent ahead), and no CPU left for it
    assert _acts(s, StartWorker) == []
    assert s.tasks[_tid(1)].phase == "READY"


def test_a_connecting_worker_takes_a_queued_task() -> None:
    s = _node(cpus=1)
    _submit(s, 0)
    assert len(_acts(s, StartWorker)) == 1
    s.outbox.clear()
    s.worker_starting(_wid(0))  # counted: the START_WORKER above asked for it
    s.connect(_cid(0), "worker", 100, _wid(0))
    assert _executed(s) == [(_cid(0), _tid(0))]
    assert s.workers.starting == 0 and s.resources.available["CPU"] == 0.0


# ---- pipelining ------------------------------------------------------------------------


def test_extra_tasks_are_sent_ahead_to_busy_workers_at_most_pipeline_depth_each() -> None:
    s = _node(cpus=2, workers=2)
    n = 2 + 2 * DEFAULTS.pipeline_depth + 1
    for i in range(n):
        _submit(s, i)
    per_worker = Counter(c for c, _ in _executed(s))
    assert per_worker == {_cid(0): 1 + DEFAULTS.pipeline_depth, _cid(1): 1 + DEFAULTS.pipeline_depth}
    assert s.tasks[_tid(n - 1)].phase == "READY" and not s.tasks[_tid(n - 1)].worker_id
    assert all(len(w.queued) == DEFAULTS.pipeline_depth for w in s.workers.workers.values())
    assert s.resources.available["CPU"] == 0.0
    assert _acts(s, StartWorker) == []


def test_resources_pass_to_the_sent_ahead_task_and_free_only_when_the_worker_idles() -> None:
    s = _node(cpus=1, workers=1)
    for i in range(3):
        _submit(s, i)
    w = s.workers.workers[_wid(0)]
    assert [f.task_id for f in w.queued] == [_tid(1), _tid(2)]
    for nxt in (1, 2):
        _finish(s, _tid(nxt - 1))
        assert s.resources.available["CPU"] == 0.0
        assert [f.task_id for f in w.frames] == [_tid(nxt)]
        assert w.frames[0].resources == {"CPU": 1.0} and w.state == "BUSY"
    _finish(s, _tid(2))
    assert s.resources.available["CPU"] == 1.0
    assert w.state == "IDLE" and w in s.workers.idle and not w.frames


def test_cancelling_a_sent_ahead_task_resolves_it_at_once_and_tells_the_worker() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    _submit(s, 1)
    s.outbox.clear()
    s.cancel(_tid(1), force=False, recursive=False)
    assert [(c, o.task_id) for c, o in _ops(s, "cancel")] == [(_cid(0), _tid(1))]
    assert isinstance(_error_sent(s, _ret(1)), TaskCancelledError)
    assert _tid(1) not in s.tasks and "CANCELLED" in _events(s, _tid(1))
    assert _acts(s, KillWorker) == []
    _finish(s, _tid(0))  # nothing is left to take its resources over
    assert s.resources.available["CPU"] == 1.0 and s.workers.workers[_wid(0)].state == "IDLE"


def test_a_dead_worker_requeues_its_sent_ahead_tasks_without_using_a_retry() -> None:
    s = _node(cpus=1, workers=2)
    for i in range(3):
        _submit(s, i)  # max_retries=0 for all
    busy = s.tasks[_tid(0)].worker_id
    assert {s.tasks[_tid(i)].worker_id for i in range(3)} == {busy}
    s.outbox.clear()
    s.worker_exited(busy, -9)
    assert isinstance(_error_sent(s, _ret(0)), WorkerCrashedError)
    for i in (1, 2):
        assert s.tasks[_tid(i)].spec.attempt == 0
        assert "RETRYING" not in _events(s, _tid(i))
    other = _cid(1) if busy == _wid(0) else _cid(0)
    assert _executed(s) == [(other, _tid(1)), (other, _tid(2))]


# ---- blocking --------------------------------------------------------------------------


def test_a_blocked_worker_lends_its_cpu_to_another_worker() -> None:
    s = _node(cpus=1, workers=2)
    _submit(s, 0)
    _block(s, _tid(0))
    assert s.resources.available["CPU"] == 1.0
    s.outbox.clear()
    _submit(s, 1)  # not a child and not waited on: an idle worker takes it
    assert [t for _, t in _executed(s)] == [_tid(1)]
    assert s.tasks[_tid(1)].worker_id != s.tasks[_tid(0)].worker_id


def test_unblocking_takes_the_cpu_back() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    _block(s, _tid(0))
    assert s.resources.available["CPU"] == 1.0
    _block(s, _tid(0), blocked=False)
    assert s.resources.available["CPU"] == 0.0
    _block(s, _tid(0), blocked=False)  # a repeated unblock changes nothing
    assert s.resources.available["CPU"] == 0.0
    _finish(s, _tid(0))
    assert s.resources.available["CPU"] == 1.0


def test_a_queued_task_the_blocked_worker_waits_on_runs_inline_in_it() -> None:
    s = _node(cpus=1, workers=2)
    _submit(s, 0)
    _submit(s, 1, cpu=0.5)  # queued: no CPU, and another shape than task 0
    assert s.tasks[_tid(1)].phase == "READY"
    runner = _client_of(s, _tid(0))
    s.outbox.clear()
    _block(s, _tid(0), waiting_on=(_ret(1),))
    assert _executed(s) == [(runner, _tid(1))]  # not the idle worker
    assert [f.task_id for f in s.workers.workers[s.tasks[_tid(0)].worker_id].frames] == [_tid(0), _tid(1)]


def test_a_waited_on_task_behind_others_in_its_queue_runs_inline() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    _submit(s, 1, cpu=0.5)
    _submit(s, 2, cpu=0.5)  # behind task 1 in the same queue
    s.outbox.clear()
    _block(s, _tid(0), waiting_on=(_ret(2),))
    assert _executed(s) == [(_cid(0), _tid(2))]
    assert s.tasks[_tid(1)].phase == "READY"
    _finish(s, _tid(2))
    _block(s, _tid(0), blocked=False)  # its get returned
    s.outbox.clear()
    _block(s, _tid(0), waiting_on=(_ret(1),))  # and it waits on task 1 next
    assert _executed(s) == [(_cid(0), _tid(1))]


def test_children_of_a_blocked_task_prefer_its_worker() -> None:
    s = _node(cpus=1, workers=2)
    _submit(s, 0)
    runner = _client_of(s, _tid(0))
    _block(s, _tid(0))
    s.outbox.clear()
    _submit(s, 1, parent=0)
    assert _executed(s) == [(runner, _tid(1))]


def test_a_result_for_a_lower_frame_pops_that_frame() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    _block(s, _tid(0))
    _submit(s, 1, parent=0)
    w = s.workers.workers[_wid(0)]
    assert [f.task_id for f in w.frames] == [_tid(0), _tid(1)]
    _finish(s, _tid(0))  # the lower frame ends first
    assert [f.task_id for f in w.frames] == [_tid(1)]
    assert s.resources.available["CPU"] == 0.0  # task 1 still holds the CPU
    _finish(s, _tid(1))
    assert s.resources.available["CPU"] == 1.0 and w.state == "IDLE"


def test_inline_stacking_stops_at_max_inline_depth() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    w = s.workers.workers[_wid(0)]
    for depth in range(1, DEFAULTS.max_inline_depth):
        _block(s, _tid(depth - 1))
        _submit(s, depth, parent=depth - 1)
    assert len(w.frames) == DEFAULTS.max_inline_depth
    assert _acts(s, StartWorker) == []
    s.outbox.clear()
    top = DEFAULTS.max_inline_depth - 1
    _block(s, _tid(top))
    _submit(s, top + 1, parent=top)
    assert _executed(s) == []
    assert len(w.frames) == DEFAULTS.max_inline_depth
    assert len(_acts(s, StartWorker)) == 1  # it runs in a new worker instead


# ---- results, references, freeing ------------------------------------------------------


def test_a_result_is_pushed_to_its_owner() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    s.outbox.clear()
    _finish(s, _tid(0), b"forty-two")
    assert [(c, o.object_id, o.inline) for c, o in _ops(s, "object")] == [(DRIVER, _ret(0), b"forty-two")]
    assert _events(s, _tid(0)) == ["FINISHED"]
    assert _tid(0) not in s.tasks


def test_a_result_nobody_holds_any_more_is_dropped() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    s.update_refs(DRIVER, add=[], remove=[_ret(0)])
    s.outbox.clear()
    _finish(s, _tid(0), b"x" * 10, shm_path="/shm/r")
    assert _ops(s, "object") == []
    assert _ret(0) not in s.objects and s.store.freed == [_ret(0)]
    assert s.store.sealed == [] and _acts(s, ObjectLocation) == []


def test_dropping_the_last_ref_frees_a_store_object_once() -> None:
    s = _node()
    oid = _ids.object_id(b"p" * 16, 0)
    s.put(DRIVER, common_pb2.ObjectData(object_id=oid, shm_path="/shm/p", size=4096))
    assert _acts(s, ObjectLocation) == [ObjectLocation(oid, 4096, False, DRIVER)]  # its owner put it
    s.outbox.clear()
    s.update_refs(DRIVER, add=[], remove=[oid])
    assert s.store.freed == [oid] and oid not in s.objects
    assert _acts(s, ObjectLocation) == [ObjectLocation(oid, 4096, True)]
    s.update_refs(DRIVER, add=[], remove=[oid])  # a ref the client does not hold: ignored
    assert s.store.freed == [oid]


def test_nested_refs_live_until_their_container_is_freed() -> None:
    s = _node()
    inner, outer = _ids.object_id(b"i" * 16, 0), _ids.object_id(b"o" * 16, 0)
    s.put(DRIVER, common_pb2.ObjectData(object_id=inner, shm_path="/shm/i", size=10))
    s.put(DRIVER, common_pb2.ObjectData(object_id=outer, inline=b"box", size=3, nested_refs=[inner]))
    s.update_refs(DRIVER, add=[], remove=[inner])
    assert inner in s.objects and s.store.freed == []
    s.update_refs(DRIVER, add=[], remove=[outer])
    assert outer not in s.objects and inner not in s.objects
    assert s.store.freed == [inner]


def test_a_client_disconnect_releases_its_refs() -> None:
    s = _node(cpus=1, workers=1)
    oid = _ids.object_id(b"p" * 16, 0)
    s.put(DRIVER, common_pb2.ObjectData(object_id=oid, shm_path="/shm/p", size=10))
    _submit(s, 0)
    s.disconnect(DRIVER)
    assert s.store.freed == [oid] and oid not in s.objects
    s.outbox.clear()
    _finish(s, _tid(0), shm_path="/shm/r")  # its result has no holder left
    assert _ops(s, "object") == [] and _ret(0) not in s.objects
    assert s.store.freed == [oid, _ret(0)]
    assert _acts(s, KillWorker) == []  # a driver's session: no process of ours to stop


def test_a_worker_whose_session_broke_is_killed_and_its_exit_retries_the_task() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0, max_retries=1)
    s.outbox.clear()
    s.disconnect(_cid(0))
    assert _acts(s, KillWorker) == [KillWorker(_wid(0))]
    assert s.workers.of_client(_cid(0)) is None and s.tasks[_tid(0)].phase == "RUNNING"
    s.worker_exited(_wid(0), -9)
    assert "RETRYING" in _events(s, _tid(0)) and s.tasks[_tid(0)].phase == "READY"


def test_each_part_counts_its_own_and_the_node_combines_them() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    _submit(s, 1)
    assert s.statistics()["stats"] == {"submitted": 2, "dispatched": 2, "local": 2}  # 1 ahead
    s.cancel(_tid(1), force=False, recursive=False)  # sent ahead, not started: over now
    _finish(s, _tid(0))
    stats = s.statistics()["stats"]
    assert stats["finished"] == 1 and stats["failed"] == 1 and "spilled" not in stats
    load = s.load()
    assert (load.tasks_local, load.tasks_spilled, load.tasks_received) == (2, 0, 0)


# ---- failures --------------------------------------------------------------------------


def test_a_dead_worker_retries_its_task_within_max_retries_then_fails_it() -> None:
    s = _node(cpus=1, workers=2)
    _submit(s, 0, max_retries=1)
    first = s.tasks[_tid(0)].worker_id
    s.outbox.clear()
    s.worker_exited(first, -9)
    assert "RETRYING" in _events(s, _tid(0)) and s.tasks[_tid(0)].spec.attempt == 1
    assert len(_executed(s)) == 1 and s.tasks[_tid(0)].worker_id not in (b"", first)
    assert _ops(s, "object") == []
    s.outbox.clear()
    s.worker_exited(s.tasks[_tid(0)].worker_id, 1)
    err = _error_sent(s, _ret(0))
    assert isinstance(err, WorkerCrashedError)
    assert "max_retries=1" in str(err) and "f0()" in str(err)
    assert _events(s, _tid(0)) == ["FAILED"] and _tid(0) not in s.tasks
    assert s.resources.available["CPU"] == 1.0


def test_a_force_cancelled_running_task_is_killed_and_never_retried() -> None:
    s = _node(cpus=1, workers=2)
    _submit(s, 0, max_retries=3)
    wid = s.tasks[_tid(0)].worker_id
    s.outbox.clear()
    s.cancel(_tid(0), force=True, recursive=False)
    assert _acts(s, KillWorker) == [KillWorker(wid)]
    assert _ops(s, "object") == []  # resolved only once the process is gone
    s.worker_exited(wid, -9)
    assert isinstance(_error_sent(s, _ret(0)), TaskCancelledError)
    assert "RETRYING" not in _events(s, _tid(0)) and _executed(s) == []
    assert _tid(0) not in s.tasks


def test_a_force_cancelled_task_ends_in_the_cancelled_state() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    s.cancel(_tid(0), force=True, recursive=False)
    s.outbox.clear()
    s.worker_exited(_wid(0), -9)
    assert _events(s, _tid(0)) == ["CANCELLED"]


def test_a_recursive_cancel_cancels_the_children() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    _submit(s, 1, cpu=0.5, parent=0)  # queued: no CPU for it
    _submit(s, 2, cpu=0.5, parent=0)
    s.outbox.clear()
    s.cancel(_tid(0), force=False, recursive=True)
    for i in (1, 2):
        assert isinstance(_error_sent(s, _ret(i)), TaskCancelledError)
        assert _tid(i) not in s.tasks
    assert [(c, o.task_id) for c, o in _ops(s, "cancel")] == [(_cid(0), _tid(0))]
    assert s.tasks[_tid(0)].cancelled
    s.outbox.clear()
    _finish(s, _tid(0))  # the cancelled children never run
    assert _executed(s) == []


def test_a_cancel_then_a_force_cancel_escalates_to_a_kill() -> None:
    s = _node(cpus=1, workers=1)
    _submit(s, 0)
    s.outbox.clear()
    s.cancel(_tid(0), force=False, recursive=False)
    assert len(_ops(s, "cancel")) == 1 and _acts(s, KillWorker) == []
    s.cancel(_tid(0), force=False, recursive=False)  # repeated: nothing new
    assert len(_ops(s, "cancel")) == 1
    s.cancel(_tid(0), force=True, recursive=False)
    assert _acts(s, KillWorker) == [KillWorker(_wid(0))]
    s.cancel(_tid(0), force=True, recursive=False)  # killed once only
    assert len(_acts(s, KillWorker)) == 1


def test_get_of_an_unknown_object_answers_object_lost() -> None:
    s = _node()
    oid = _ids.object_id(b"?" * 16, 1)
    s.get(DRIVER, [oid])
    [(client, op)] = _ops(s, "object_error")
    assert client == DRIVER and op.object_id == oid
    err = codec.deserialize(op.error)
    assert isinstance(err, ObjectLostError) and oid.hex() in str(err)


# ---- infeasible ------------------------------------------------------------------------


def test_an_infeasible_task_warns_its_owner_once_and_never_runs() -> None:
    s = _node(cpus=2, workers=2)
    _submit(s, 0, nope=1)
    assert s.tasks[_tid(0)].phase == "INFEASIBLE" and _tid(0) in s.spill.infeasible
    assert "INFEASIBLE" in _events(s, _tid(0))
    warned = [(c, e.task_id, e.state) for c, e in _ops(s, "event")]
    assert warned == [(DRIVER, _tid(0), "INFEASIBLE")]
    assert "nope: 1" in _ops(s, "event")[0][1].detail
    _submit(s, 1)  # the node keeps scheduling other work, without it
    _finish(s, _tid(1))
    _add_worker(s, 5)
    assert [t for _, t in _executed(s)] == [_tid(1)]
    assert len(_ops(s, "event")) == 1 and _acts(s, StartWorker) == []


# ---- spilling --------------------------------------------------------------------------


def _spilling_node(threshold: int = 2, workers: int = 1) -> Node:
    s = _node(cpus=1, workers=workers, spill_threshold=threshold)
    s.set_schedulers(True)
    s.peer_alive(PEER, common_pb2.NodeLoad(total={"CPU": 8.0}, available={"CPU": 0.0}))  # busy, no queue
    return s


def _fill_queue(s: Node) -> None:
    """Task 0 holds the CPU; tasks 1 and 2 (another shape, never sent ahead) wait."""
    _submit(s, 0)
    _submit(s, 1, cpu=0.5)
    _submit(s, 2, cpu=0.5)
    assert _acts(s, Spill) == [] and s.queue_length() == 2


def test_a_task_over_the_queue_threshold_spills_with_its_inline_args() -> None:
    s = _spilling_node()
    _fill_queue(s)
    arg, big = _ids.object_id(b"a" * 16, 0), _ids.object_id(b"b" * 16, 0)
    s.put(DRIVER, common_pb2.ObjectData(object_id=arg, inline=b"abc", size=3))
    s.put(DRIVER, common_pb2.ObjectData(object_id=big, shm_path="/shm/b", size=5000))
    _submit(s, 3, cpu=0.5, arg_refs=(arg, big))
    [(task_id, req)] = _spills(s)
    assert task_id == _tid(3) and req.reason == SpillReason.QUEUE_FULL and req.from_node_id == NODE
    assert req.spec.task_id == _tid(3) and req.spec.spill_count == 1
    assert [(a.object_id, a.inline, a.shm_path, a.size) for a in req.args] == [
        (arg, b"abc", "", 3), (big, b"", "", 5000)]  # a local path means nothing elsewhere
    assert [(i.object_id, list(i.node_ids)) for i in req.inputs] == [(arg, [NODE]), (big, [NODE])]
    assert s.tasks[_tid(3)].phase == "SPILLED" and s.queue_length() == 2


def test_a_task_a_scheduler_moved_is_not_spilled_again_for_a_full_queue() -> None:
    s = _spilling_node()
    _fill_queue(s)
    _submit(s, 3, cpu=0.5, spill_count=1)
    assert _acts(s, Spill) == []
    assert s.tasks[_tid(3)].phase == "READY" and s.queue_length() == 3


def test_a_task_that_never_fits_here_spills() -> None:
    s = _spilling_node()
    _submit(s, 0, cpu=4, spill_count=1)  # even a task moved before: it cannot run here
    [(task_id, req)] = _spills(s)
    assert task_id == _tid(0) and req.reason == "never fits here"
    assert s.tasks[_tid(0)].phase == "SPILLED" and _executed(s) == []


def test_a_dead_target_node_reruns_the_tasks_spilled_there() -> None:
    s = _spilling_node()
    _fill_queue(s)
    _submit(s, 3, cpu=0.5, max_retries=1)
    s.spilled(_tid(3), PEER, "sched-1", SpillReason.QUEUE_FULL)
    assert s.spill.spilled_to == {_tid(3): PEER}
    [ev] = [a.event for a in _acts(s, ReportEvent) if a.event.state == "SPILLED"]
    assert ev.target_node_id == PEER and ev.scheduler == "sched-1"
    s.outbox.clear()
    s.peer_died(PEER)
    task = s.tasks[_tid(3)]
    assert task.spec.attempt == 1 and "RETRYING" in _events(s, _tid(3))
    assert task.phase == "READY" and s.spill.spilled_to == {}  # no peer left to spill to
    assert _ops(s, "object") == []


def test_a_dead_target_node_fails_spilled_tasks_whose_retries_are_spent() -> None:
    s = _spilling_node()
    _fill_queue(s)
    _submit(s, 3, cpu=0.5)  # max_retries=0
    s.spilled(_tid(3), PEER, "sched-1", SpillReason.QUEUE_FULL)
    s.outbox.clear()
    s.peer_died(PEER)
    err = _error_sent(s, _ret(3))
    assert isinstance(err, NodeDiedError) and "max_retries=0" in str(err)
    assert _tid(3) not in s.tasks and "RETRYING" not in _events(s, _tid(3))


def test_a_node_declared_dead_stays_dead_even_if_a_row_says_it_is_alive() -> None:
    """Issue 12 (fencing): a dead id never comes back; the process rejoins under a new one."""
    s = _spilling_node()
    _fill_queue(s)
    _submit(s, 3, cpu=0.5, max_retries=1)
    s.spilled(_tid(3), PEER, "sched-1", SpillReason.QUEUE_FULL)
    s.outbox.clear()
    s.peer_died(PEER)
    task = s.tasks[_tid(3)]
    assert s.spill.spilled_to == {} and task.spec.attempt == 1  # runs again here
    assert "RETRYING" in _events(s, _tid(3))
    s.peer_alive(PEER, common_pb2.NodeLoad(total={"CPU": 8.0}, available={"CPU": 8.0}))  # stale
    assert PEER in s.spill.dead_peers and PEER not in s.spill.peers
    s.remote_result(node_pb2.ReportResultsRequest(task_id=_tid(3), node_id=PEER))  # what it still sends
    assert _tid(3) in s.tasks and "FINISHED" not in _events(s, _tid(3))
    s.spilled(_tid(3), PEER, "sched-2", SpillReason.QUEUE_FULL)  # a late placement there
    assert s.spill.spilled_to == {} and task.spec.attempt == 1


def test_a_spilled_task_placed_back_home_runs_as_a_local_task() -> None:
    s = _spilling_node(threshold=1, workers=2)
    _submit(s, 0)
    _submit(s, 1, cpu=0.5)
    _submit(s, 5, cpu=0.5)  # a round queued here: the next one spills
    _submit(s, 2, cpu=0.5)
    [(_, req)] = _spills(s)
    s.accept_forwarded(node_pb2.ForwardTaskRequest(spec=req.spec, home_address="me:1",
                                                   home_node_id=NODE, scheduler="sched-1"))
    s.spilled(_tid(2), NODE, "sched-1", SpillReason.QUEUE_FULL)  # the scheduler's answer comes after
    task = s.tasks[_tid(2)]
    assert task.phase == "READY" and task.spec.spill_count >= 1  # never spilled for being busy again
    assert _tid(2) not in s.spill.forwarded and s.spill.spilled_to == {}
    _finish(s, _tid(0))
    assert _tid(2) in [t for _, t in _executed(s)]
    s.outbox.clear()
    _finish(s, _tid(2), b"home")
    assert [(c, o.inline) for c, o in _ops(s, "object")] == [(DRIVER, b"home")]
    assert _acts(s, ReportHome) == []


def test_a_forwarded_task_reports_its_results_home_instead_of_sending_them() -> None:
    s = _node(cpus=1, workers=1)
    arg = _ids.object_id(b"a" * 16, 0)
    spec = _spec(7, arg_refs=(arg,), spill_count=1)  # owner named like a local client: still goes home
    s.accept_forwarded(node_pb2.ForwardTaskRequest(
        spec=spec, args=[common_pb2.ObjectData(object_id=arg, inline=b"in", size=2)],
        home_address="home:1", home_node_id=PEER, scheduler="sched-1"))
    [(client, ex)] = _ops(s, "execute")
    assert client == _cid(0) and [a.inline for a in ex.args] == [b"in"]
    s.outbox.clear()
    _finish(s, _tid(7), b"out")
    assert _ops(s, "object") == []
    [(address, rep)] = _reports(s)
    assert address == "home:1" and rep.task_id == _tid(7) and not rep.failed
    assert rep.node_id == NODE and [r.inline for r in rep.returns] == [b"out"]
    assert _tid(7) not in s.spill.forwarded and arg not in s.objects  # its input is freed here


def test_a_forwarded_result_in_the_store_stays_here_until_home_releases_it() -> None:
    s = _node(cpus=1, workers=1)
    s.accept_forwarded(node_pb2.ForwardTaskRequest(spec=_spec(7), home_address="home:1",
                                                   home_node_id=PEER))
    _finish(s, _tid(7), b"x" * 100, shm_path="/shm/big")
    [(_, rep)] = _reports(s)
    [out] = rep.returns
    assert (out.object_id, out.node_id, out.inline, out.size) == (_ret(7), NODE, b"", 100)
    assert _ret(7) in s.objects and s.store.freed == []
    # Home spills a consumer of that result here too: its end must not free the held copy.
    s.accept_forwarded(node_pb2.ForwardTaskRequest(
        spec=_spec(8, arg_refs=(_ret(7),)), home_address="home:1", home_node_id=PEER,
        args=[common_pb2.ObjectData(object_id=_ret(7), size=100, node_id=NODE)]))
    _finish(s, _tid(8))
    assert _ret(7) in s.objects and s.store.freed == []
    s.release_remote_holds([_ret(7)], PEER)
    assert _ret(7) not in s.objects and s.store.freed == [_ret(7)]


def test_remote_results_with_inline_returns_reach_the_owner() -> None:
    s = _spilling_node()
    _fill_queue(s)
    _submit(s, 3, cpu=0.5)
    s.spilled(_tid(3), PEER, "sched-1", SpillReason.QUEUE_FULL)
    s.outbox.clear()
    s.remote_result(node_pb2.ReportResultsRequest(
        task_id=_tid(3), node_id=PEER,
        returns=[common_pb2.ObjectData(object_id=_ret(3), inline=b"far", size=3)]))
    assert [(c, o.object_id, o.inline) for c, o in _ops(s, "object")] == [(DRIVER, _ret(3), b"far")]
    assert _events(s, _tid(3)) == ["FINISHED"]
    assert _tid(3) not in s.tasks and s.spill.spilled_to == {}


# ---- reaping idle workers --------------------------------------------------------------


def test_reap_idle_stops_surplus_workers_idle_long_enough_keeping_the_recently_used() -> None:
    t = [0.0]
    s = _node(cpus=2, workers=4, t=t)
    _submit(s, 0)
    _submit(s, 1)
    recent = {s.tasks[_tid(0)].worker_id, s.tasks[_tid(1)].worker_id}
    t[0] = 50.0
    _finish(s, _tid(0))
    _finish(s, _tid(1))
    t[0] = 55.0
    assert _reap(s, t, 60.0) == []  # the two oldest have idled 55 s only
    old = set(s.workers.workers) - recent
    assert set(_reap(s, t, 10.0)) == old
    assert set(s.workers.workers) == recent and len(s.workers.idle) == 2
    t[0] = 1000.0
    assert _reap(s, t, 10.0) == []  # one worker per CPU stays warm


def test_a_worker_counts_as_idle_from_the_end_of_its_last_task() -> None:
    t = [0.0]
    s = _node(cpus=1, workers=3, t=t)
    _submit(s, 0, cpu=0.5)
    _submit(s, 1, cpu=0.5)  # two workers busy at once: more than one per CPU
    w0, w1 = s.tasks[_tid(0)].worker_id, s.tasks[_tid(1)].worker_id
    [never_used] = set(s.workers.workers) - {w0, w1}
    t[0] = 50.0
    _finish(s, _tid(0))
    t[0] = 52.0
    _finish(s, _tid(1))
    t[0] = 58.0
    assert _reap(s, t, 9.0) == [never_used]  # w0 idled 8 s only; w1 is the one kept warm
    assert _reap(s, t, 8.0) == [w0]


def test_a_surplus_idle_worker_is_not_reaped_while_it_owns_what_others_hold() -> None:
    t = [0.0]
    s = _node(cpus=1, workers=2, t=t)  # w1, the most recently connected, stays warm
    put = _ids.object_id(b"p" * 16, 0)
    s.put(_cid(0), common_pb2.ObjectData(object_id=put, shm_path="/shm/p", size=5000))
    s.update_refs(DRIVER, [put], [])  # the driver borrows what w0 put (returned nested)
    s.update_refs(_cid(0), [], [put])  # and w0 dropped its own ref
    t[0] = 100.0
    assert _reap(s, t, 10.0) == []  # its death would take the object: it stays (as in Ray)
    assert put in s.objects and _wid(0) in s.workers.workers
    s.update_refs(DRIVER, [], [put])
    assert _reap(s, t, 10.0) == [_wid(0)]  # owning nothing in use any more, it goes


def test_a_freshly_connected_worker_is_not_reaped_at_once() -> None:
    t = [1000.0]
    s = _node(cpus=1, workers=3, t=t)
    t[0] = 1001.0
    assert _reap(s, t, 10.0) == []
