"""The node's memory monitor, driven through the pure local scheduler with made-up readings.

No processes and no real memory: each test builds a node with fake workers, hands the
monitor a ``MemoryReading`` and a fake RSS, and reads the decisions from the actions
(``KillWorker``) and from what the owner receives when the killed worker's exit is reported.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime import _ids
from runtime.config import Settings
from runtime.exceptions import ConfigError, OutOfMemoryError, WorkerCrashedError
from runtime.node.actions import Action, KillWorker, ReportEvent, Send, StartWorker
from runtime.node.memory_monitor import MemoryReading, choose_victim, percents, size
from runtime.node.state import LocalScheduler
from runtime.protocol import codec, common_pb2, node_pb2

NODE, DRIVER = b"N" * 16, b"D" * 16
GIB = 2**30
#: 96 % of a 24 GiB machine: over the default threshold (95 %).
HIGH = MemoryReading(used=int(23.04 * GIB), total=24 * GIB)
LOW = MemoryReading(used=12 * GIB, total=24 * GIB)


def _rss(pid: int) -> int:
    return 12 * GIB


class Store:
    """The shared-memory store, reduced to what LocalScheduler calls."""

    def seal(self, oid: bytes, size: int) -> None: ...
    def locate(self, oid: bytes) -> str: return "/shm/" + oid.hex()
    def pin(self, oid: bytes) -> None: ...
    def unpin(self, oid: bytes) -> None: ...
    def free(self, oid: bytes) -> None: ...


class Node(LocalScheduler):
    """A node with ``workers`` connected workers (pids 100, 101 ...) and one driver; every
    action made is kept in ``seen``."""

    def __init__(self, cpus: int = 4, workers: int = 4, **settings: Any) -> None:
        super().__init__(NODE, {"CPU": float(cpus)}, Store(),
                         lambda e: codec.serialize(e, error=True).to_bytes(),
                         settings=Settings(**settings), clock=lambda: 0.0)
        self.seen: list[Action] = []
        self.started = 0
        self.connect(DRIVER, "driver", 1)
        for _ in range(workers):
            self.add_worker(counted=False)
        self.drain()

    def add_worker(self, counted: bool = True) -> None:
        """A worker process starts and connects (pids 100, 101 ...)."""
        i, self.started = self.started, self.started + 1
        wid = bytes([1, i]) + b"w" * 14
        self.worker_starting(wid, counted=counted)
        self.connect(bytes([2, i]) + b"c" * 14, "worker", 100 + i, wid)

    def drain(self) -> list[Action]:
        new = self.take_actions()
        self.seen.extend(new)
        return new

    def submit_task(self, i: int, max_retries: int = 3, function_id: bytes = b"") -> bytes:
        spec = common_pb2.TaskSpec(task_id=_tid(i), name=f"f{i}", num_returns=1, owner_id=DRIVER,
                                   function_id=function_id or bytes([i]) * 20,
                                   max_retries=max_retries)
        spec.resources["CPU"] = 1.0
        self.submit(DRIVER, spec)
        self.drain()
        return _tid(i)

    def start_actor(self) -> bytes:
        """An actor, alive (its constructor returned); the id of its worker."""
        spec = common_pb2.TaskSpec(task_id=b"C" * 16, name="Counter.__init__", num_returns=1,
                                   owner_id=DRIVER, actor_id=b"A" * 16, actor_creation=True,
                                   actor_options=json.dumps({"class_name": "Counter"}).encode())
        spec.resources["CPU"] = 1.0
        self.submit(DRIVER, spec)
        worker_id = self.tasks[b"C" * 16].worker_id
        self.result(self.workers.workers[worker_id].client_id, node_pb2.TaskResult(task_id=b"C" * 16))
        self.drain()
        return worker_id

    def check(self, reading: MemoryReading = HIGH) -> list[bytes]:
        """One check of the monitor: the workers it killed."""
        self.memory.check(reading, _rss)
        return [a.worker_id for a in self.drain() if isinstance(a, KillWorker)]

    def worker_of(self, task_id: bytes) -> bytes:
        return self.tasks[task_id].worker_id

    def exit(self, worker_id: bytes) -> None:
        """The killed worker's process is gone (SIGKILL); the workers the node asks for
        in its place start."""
        self.worker_exited(worker_id, -9)
        for _ in [a for a in self.drain() if isinstance(a, StartWorker)]:
            self.add_worker()
        self.drain()

    def error_sent(self, task_id: bytes) -> BaseException:
        oid = _ids.object_id(task_id, 1)
        blobs = [a.op.object.inline for a in self.seen if isinstance(a, Send)
                 and a.op.WhichOneof("op") == "object" and a.op.object.object_id == oid]
        assert len(blobs) == 1, f"expected one value of {oid.hex()}, got {len(blobs)}"
        err = codec.deserialize(blobs[0])
        assert isinstance(err, BaseException)
        return err

    def events(self, task_id: bytes) -> list[str]:
        return [a.event.state for a in self.seen
                if isinstance(a, ReportEvent) and a.event.task_id == task_id]


def _tid(i: int) -> bytes:
    return bytes([3, i]) + b"t" * 14


# ---- the policy --------------------------------------------------------------------


def test_under_the_threshold_nothing_is_killed() -> None:
    s = Node()
    s.submit_task(0)
    assert s.check(LOW) == []
    assert s.check(MemoryReading(used=int(0.95 * 24 * GIB), total=24 * GIB)) == []  # at it: not past


def test_the_newest_retriable_task_is_killed_before_older_ones_non_retriable_ones_and_actors() -> None:
    s = Node(cpus=4, workers=4)
    s.start_actor()
    s.submit_task(0)
    s.submit_task(1)
    s.submit_task(2, max_retries=0)  # newest of all, but it cannot be retried
    assert s.check() == [s.worker_of(_tid(1))]


def test_a_task_that_cannot_be_retried_goes_before_an_actor_and_actors_go_last() -> None:
    s = Node(cpus=4, workers=4)
    actor_worker = s.start_actor()
    s.submit_task(0, max_retries=0)
    victim = s.worker_of(_tid(0))
    assert s.check() == [victim]
    s.exit(victim)
    assert s.check() == [actor_worker]  # only the actor is left


def test_idle_workers_are_never_killed() -> None:
    s = Node(workers=3)
    assert s.check() == []
    assert choose_victim(s.workers.workers.values(), s.task) is None


def test_one_kill_at_a_time_the_next_only_after_the_killed_worker_exited() -> None:
    s = Node()
    s.submit_task(0)
    s.submit_task(1)
    first = s.worker_of(_tid(1))
    assert s.check() == [first]
    assert s.check() == []  # still over, but the killed worker's memory is not free yet
    s.exit(first)
    # Task 1 runs again (on a free worker) and is the newest once more.
    assert s.check() == [s.worker_of(_tid(1))] != [first]


# ---- what happens to the killed task ----------------------------------------------


def test_oom_retries_are_counted_apart_from_max_retries_then_the_task_fails_with_out_of_memory() -> None:
    s = Node(task_oom_retries=2)
    tid = s.submit_task(0, max_retries=1)
    for kill in range(3):
        [victim] = s.check()
        s.exit(victim)
        if kill < 2:
            assert tid in s.tasks and s.tasks[tid].phase == "RUNNING", f"not retried after kill {kill}"
    assert tid not in s.tasks
    assert s.events(tid).count("RETRYING") == 2 and s.events(tid)[-1] == "FAILED"
    err = s.error_sent(tid)
    assert isinstance(err, OutOfMemoryError)
    text = str(err)
    assert "Task f0() (task " in text and "was killed by the memory monitor" in text
    assert f"node {_ids.short(NODE)} used 23.0 GiB of 24.0 GiB memory (96.0 % > threshold 95.0 %)" in text
    assert "its worker (pid 10" in text and "used 12.0 GiB (RSS)" in text
    assert "killed 3 time(s), its task_oom_retries=2 are spent" in text
    assert "do not count against its max_retries=1" in text
    assert "CELLRAY_MEMORY_USAGE_THRESHOLD=0.95, the OOM retries CELLRAY_TASK_OOM_RETRIES=2" in text
    assert (err.memory_used, err.memory_total, err.threshold) == (HIGH.used, HIGH.total, 0.95)
    assert err.rss == 12 * GIB and err.pid >= 100 and err.task_id == tid.hex()


def test_an_oom_retry_leaves_max_retries_for_crashes() -> None:
    s = Node(task_oom_retries=1)
    tid = s.submit_task(0, max_retries=1)
    [victim] = s.check()
    s.exit(victim)
    assert s.tasks[tid].spec.attempt == 0  # the kill for memory used no retry of max_retries
    s.check(LOW)  # the monitor sees the kill is over
    s.worker_exited(s.worker_of(tid), 1)  # a crash: max_retries decides
    s.drain()
    assert s.tasks[tid].spec.attempt == 1
    s.worker_exited(s.worker_of(tid), 1)
    s.drain()
    assert isinstance(s.error_sent(tid), WorkerCrashedError)


def test_a_task_with_max_retries_0_is_not_retried_for_memory_as_in_ray() -> None:
    s = Node(task_oom_retries=5)
    tid = s.submit_task(0, max_retries=0)
    [victim] = s.check()
    s.exit(victim)
    err = s.error_sent(tid)
    assert isinstance(err, OutOfMemoryError)
    assert "It is not retried: its max_retries is 0" in str(err)
    assert "the newest task running there; none of them could be retried" in str(err)


def test_task_oom_retries_minus_one_retries_without_end() -> None:
    s = Node(task_oom_retries=-1)
    tid = s.submit_task(0, max_retries=1)
    for _ in range(30):
        [victim] = s.check()
        s.exit(victim)
    assert tid in s.tasks and s.tasks[tid].oom_kills == 30
    assert any("OOM retry 30 without end" in a.event.detail for a in s.seen
               if isinstance(a, ReportEvent))


def test_a_task_sent_ahead_to_the_killed_worker_runs_again_without_using_a_retry() -> None:
    s = Node(cpus=1, workers=2, pipeline_depth=2)
    running = s.submit_task(0, function_id=b"g" * 20)
    ahead = s.submit_task(1, function_id=b"g" * 20)
    victim = s.worker_of(running)
    assert s.worker_of(ahead) == victim  # sent ahead to it
    assert s.check() == [victim]
    s.exit(victim)
    assert s.tasks[running].oom_kills == 1 and s.tasks[ahead].oom_kills == 0


def test_an_actor_killed_for_memory_follows_its_max_restarts() -> None:
    s = Node(cpus=2, workers=2)
    actor_worker = s.start_actor()
    assert s.check() == [actor_worker]
    s.exit(actor_worker)
    assert s.actors.actors[b"A" * 16].state == "DEAD"  # max_restarts=0, as in Ray


# ---- settings and messages ----------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [("memory_usage_threshold", 0.0),
                                             ("memory_usage_threshold", 1.5),
                                             ("memory_monitor_ms", -1), ("task_oom_retries", -2)])
def test_out_of_range_memory_settings_fail_loudly(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"CELLRAY_{name.upper()}"):
        Settings(**{name: value})


def test_sizes_read_as_gib_or_mib() -> None:
    assert size(int(23.1 * GIB)) == "23.1 GiB"
    assert size(600 * 2**20) == "600 MiB"


def test_percents_take_the_decimals_that_tell_usage_from_the_threshold() -> None:
    assert percents(0.963, 0.95) == ("96.3 %", "95.0 %")
    assert percents(0.06862, 0.0686) == ("6.862 %", "6.860 %")
