"""runtime.state against a real cluster: queries, subscriptions and driver hooks.

The first test starts and shuts down its own cluster (it checks that shutdown ends
subscriptions); every other test shares the module's cluster (``cluster`` fixture,
``rt.init(num_cpus=2)``). Task rows reach the GCS in batches, so tests wait for them with
``wait_for``, never with sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import cloudpickle
import pytest

import runtime as rt
from runtime import state
from runtime.gcs.client import GcsClient
from runtime.gcs.service import GcsService
from runtime.gcs.state import GcsState
from runtime.protocol import gcs_pb2
from runtime.rpc.server import create_server
from runtime.testing.wait import wait_for

T = TypeVar("T")

pytestmark = pytest.mark.cluster

# Workers cannot import this module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@rt.remote
def square(x: int) -> int:
    return x * x


@rt.remote
def counted(x: int) -> int:
    return x


@rt.remote
def boom() -> None:
    raise ValueError("kaput: the state test wanted this")


@rt.remote
def stepped() -> str:
    return "ok"


@rt.remote
def child_prints(tag: str) -> None:
    print(f"child says {tag}")


@rt.remote
def parent_prints(tag: str) -> None:
    print(f"parent says {tag}")
    print(f"parent warns {tag}", file=sys.stderr)
    rt.get(child_prints.remote(tag))


@rt.remote(num_cpus=64)
def too_big() -> None:
    pass


@rt.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self) -> int:
        self.n += 1
        return self.n


def _task(ref: rt.ObjectRef) -> state.TaskState | None:
    return state.get_task(ref)


# ---- with a cluster of its own (runs before the shared one starts) -------------------------


def test_shutdown_ends_subscriptions_quietly(caplog: pytest.LogCaptureFixture) -> None:
    assert not rt.is_initialized()
    rt.init(num_cpus=1)
    try:
        changes: list[state.Change] = []
        sub = state.subscribe(["tasks", "nodes"], changes.append)
        wait_for(lambda: any(c.snapshot_done for c in changes), what="the end of the snapshot")
        state.add_output_handler(print)
        state.set_origin_provider(lambda: "cell")
    finally:
        rt.shutdown()
    wait_for(lambda: not sub.active, what="shutdown to end the subscription")
    sub.close()  # harmless after shutdown
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING
             and (r.name.startswith("runtime.state") or r.name == "asyncio")]
    assert noisy == []
    with pytest.raises(RuntimeError, match=r"call runtime\.init\(\) first"):
        state.list_nodes()


# ---- on the module's shared cluster --------------------------------------------------------


def test_list_nodes_shows_the_node_alive_with_its_cpus(cluster: rt.ClusterInfo) -> None:
    nodes = state.list_nodes()
    assert [n.node_id for n in nodes] == [cluster.node_id]
    node = nodes[0]
    assert node.alive and node.death_cause == ""
    assert node.resources_total["CPU"] == 2
    assert node.store_capacity > 0 and node.last_heartbeat is not None
    assert node.address and node.hostname


def test_list_jobs_shows_this_driver(cluster: rt.ClusterInfo) -> None:
    jobs = {j.job_id: j for j in state.list_jobs()}
    me = jobs[cluster.job_id]
    assert me.alive and me.driver_pid == os.getpid() and me.end_time is None
    assert me.start_time is not None


def test_finished_tasks_have_durations_newest_first(cluster: rt.ClusterInfo) -> None:
    refs = [square.remote(i) for i in range(4)]
    assert rt.get(refs) == [0, 1, 4, 9]
    ids = [r.task_id() for r in refs]

    def finished() -> list[state.TaskState]:
        tasks = [t for t in state.list_tasks(name="square") if t.task_id in ids]
        return tasks if len(tasks) == 4 and all(t.state == "FINISHED" for t in tasks) else []

    tasks = wait_for(finished, what="the four square tasks to show FINISHED")
    for t in tasks:
        assert t.duration is not None and t.duration >= 0
        assert t.node_id == cluster.node_id and t.job_id == cluster.job_id
        assert t.worker_pid and t.attempt == 0 and t.done
        assert [e.state for e in t.history][-1] == "FINISHED"
    submitted = [t.submit_time or 0.0 for t in tasks]
    assert submitted == sorted(submitted, reverse=True)
    one = state.get_task(refs[0])
    assert one is not None and one.task_id == ids[0] and one.state == "FINISHED"
    assert state.get_task(ids[1]) == next(t for t in tasks if t.task_id == ids[1])
    assert state.get_task("00" * 16) is None


def test_a_failing_task_shows_failed_with_its_error(cluster: rt.ClusterInfo) -> None:
    ref = boom.remote()
    with pytest.raises(ValueError, match="kaput"):
        rt.get(ref)
    wait_for(lambda: (t := _task(ref)) is not None and t.state == "FAILED",
             what="the boom task to show FAILED")
    task = _task(ref)
    assert task is not None and "kaput" in task.detail
    assert task.task_id in {t.task_id for t in state.list_tasks(state="failed")}
    with pytest.raises(ValueError, match="unknown task state"):
        state.list_tasks(state="FINSHED")


def test_summarize_tasks_counts_by_state_and_by_name(cluster: rt.ClusterInfo) -> None:
    refs = [counted.remote(i) for i in range(5)]
    rt.get(refs)
    wait_for(lambda: state.summarize_tasks(by="name").get("counted") == {"FINISHED": 5},
             what="five finished `counted` tasks in the summary")
    by_state = state.summarize_tasks()
    assert by_state["FINISHED"] >= 5
    assert sum(by_state.values()) == len(state.list_tasks(limit=None))


def test_list_objects_shows_a_large_put_not_a_small_one(cluster: rt.ClusterInfo) -> None:
    big = rt.put(b"x" * (1 << 20))
    small = rt.put(b"tiny")
    big_id, small_id = big.hex(), small.hex()

    def listed() -> dict[str, state.ObjectState]:
        return {o.object_id: o for o in state.list_objects(limit=None)}

    wait_for(lambda: big_id in listed(), what="the 1 MiB object in list_objects")
    obj = listed()[big_id]
    assert obj.size >= 1 << 20 and obj.locations == (cluster.node_id,) and not obj.spilled
    assert obj.owner_id == rt.get_runtime_context().get_worker_id()  # this driver put it
    assert small_id not in listed()  # inline objects live with their owner, not in a store
    del big
    wait_for(lambda: big_id not in listed(), what="the freed object to leave list_objects")


def test_subscribe_to_tasks_sees_the_snapshot_then_a_task_in_order(cluster: rt.ClusterInfo) -> None:
    changes: list[state.Change] = []
    threads: set[str] = set()

    def on_change(change: state.Change) -> None:
        threads.add(threading.current_thread().name)
        changes.append(change)

    with state.subscribe(["tasks"], on_change) as sub:
        wait_for(lambda: any(c.snapshot_done for c in changes), what="the end of the snapshot")
        done_at = next(i for i, c in enumerate(changes) if c.snapshot_done)
        assert all(c.snapshot and c.table == "tasks" for c in changes[:done_at])
        assert all(isinstance(c.value, state.TaskState) for c in changes[:done_at])
        ref = stepped.remote()
        assert rt.get(ref) == "ok"
        task_id = ref.task_id()

        def states() -> list[str]:
            return [c.value.state for c in changes[done_at + 1:]
                    if c.key == task_id and isinstance(c.value, state.TaskState)]

        wait_for(lambda: "FINISHED" in states(), what="the task's FINISHED change")
        assert [s for s in states() if s in ("SUBMITTED", "RUNNING", "FINISHED")] == \
            ["SUBMITTED", "RUNNING", "FINISHED"]
        assert not any(c.snapshot for c in changes[done_at + 1:])
        assert threads == {sub._thread.name} and threading.current_thread().name not in threads
    assert not sub.active
    seen = len(changes)
    rt.get(stepped.remote())
    wait_for(lambda: (t := state.list_tasks(name="stepped", limit=1)) and t[0].done,
             what="the next task to finish")
    assert len(changes) == seen  # closed: nothing more delivered
    sub.close()  # twice is harmless


def test_a_failing_callback_does_not_end_the_subscription(cluster: rt.ClusterInfo,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    seen: list[state.Change] = []

    def fragile(change: state.Change) -> None:
        seen.append(change)
        raise RuntimeError("callback bug")

    with state.subscribe(["nodes"], fragile) as sub:
        wait_for(lambda: any(c.snapshot_done for c in seen), what="the snapshot marker")
        # The node heartbeats: its row changes twice a second.
        wait_for(lambda: any(c.table == "nodes" and not c.snapshot for c in seen),
                 what="a heartbeat after the failing calls")
        assert sub.active
    assert any("callback bug" in (r.exc_text or str(r.exc_info)) for r in caplog.records)


def test_output_handler_gets_printed_lines_with_the_origin(cluster: rt.ClusterInfo) -> None:
    got: list[state.OutputLines] = []
    state.set_origin_provider(lambda: "cell-42")
    state.add_output_handler(got.append)
    state.add_output_handler(got.append)  # twice: still called once per batch
    try:
        rt.get(parent_prints.remote("hi"))

        def lines() -> dict[str, state.OutputLines]:
            return {line: out for out in list(got) for line in out.lines}

        wait_for(lambda: {"parent says hi", "parent warns hi", "child says hi"} <= lines().keys(),
                 what="the parent's and the child's lines")
        by_line = lines()
        assert all(out.origin == "cell-42" for out in by_line.values())
        said = by_line["parent says hi"]
        assert said.stream == "stdout" and said.name == "parent_prints"
        assert by_line["parent warns hi"].stream == "stderr"
        assert by_line["child says hi"].name == "child_prints"
        assert by_line["child says hi"].task_id != said.task_id
        assert sum(line == "parent says hi" for out in got for line in out.lines) == 1
    finally:
        state.remove_output_handler(got.append)
        state.set_origin_provider(None)
    n = len(got)
    rt.get(parent_prints.remote("bye"))
    rt.get(square.remote(1))  # the lines of the earlier task were sent before this result
    assert len(got) == n


def test_infeasible_task_reaches_the_event_handler_and_the_event_log(cluster: rt.ClusterInfo) -> None:
    got: list[state.SchedulerEvent] = []
    state.add_task_event_handler(got.append)
    try:
        ref = too_big.remote()
        tid = ref.task_id()
        wait_for(lambda: any(e.task_id == tid for e in got),
                 what="the INFEASIBLE warning for the too-big task")
        ev = next(e for e in got if e.task_id == tid)
        assert ev.state == "INFEASIBLE" and "CPU" in ev.detail and ev.name == "too_big"
        logged = wait_for(lambda: [e for e in state.list_events(limit=None) if e.task_id == tid],
                          what="the INFEASIBLE decision in the event log")
        assert logged[-1].state == "INFEASIBLE" and logged[-1].time is not None
        assert state.list_events(limit=1) == state.list_events(limit=None)[-1:]
        rt.cancel(ref)
        wait_for(lambda: (t := _task(ref)) is not None and t.state == "CANCELLED",
                 what="the cancelled task's row")
    finally:
        state.remove_task_event_handler(got.append)


def test_list_actors_shows_a_named_actor_alive_then_dead(cluster: rt.ClusterInfo) -> None:
    counter = Counter.options(name="state-test-counter").remote()  # type: ignore[attr-defined]
    assert rt.get(counter.inc.remote()) == 1

    def mine(state_: str) -> state.ActorState | None:
        return next((a for a in state.list_actors(state=state_) if a.actor_id == counter.actor_id), None)

    wait_for(lambda: mine("alive"), what="the counter actor to show ALIVE")
    actor = mine("ALIVE")
    assert actor is not None
    assert actor.class_name == "Counter" and actor.name == "state-test-counter"
    assert actor.node_id == cluster.node_id and actor.pid and actor.num_restarts == 0
    assert actor.job_id == cluster.job_id and actor.death_cause == ""
    rt.kill(counter)
    wait_for(lambda: mine("DEAD"), what="the killed actor to show DEAD")
    dead = mine("DEAD")
    assert dead is not None and dead.death_cause


def test_queries_from_a_task_use_the_workers_connection(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    def my_node() -> Any:
        from runtime import state as st
        return [n.node_id for n in st.list_nodes()]

    assert rt.get(my_node.remote()) == [cluster.node_id]


# ---- a GCS that drops slow subscribers early -------------------------------------------------


class SmallQueueHead:
    """A GCS served in this process, on its own loop thread, whose subscribers may fall only
    ``queue_size`` changes behind (the real head allows 10 000). Offers what ``Subscription``
    uses of a connection: ``gcs``, ``run`` and ``closed``."""

    TOKEN = "t" * 64

    def __init__(self, queue_size: int) -> None:
        self.closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.gcs, self._service, self._server = self.run(self._start(queue_size), 10.0)

    async def _start(self, queue_size: int) -> tuple[GcsClient, GcsService, Any]:
        service = GcsService(GcsState(num_shards=2), queue_size=queue_size)
        server, port = await create_server("127.0.0.1", 0, self.TOKEN, service.adders())
        service.start()
        return GcsClient(f"127.0.0.1:{port}", self.TOKEN), service, server

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        self.closed = True

        async def stop() -> None:
            await self.gcs.close()
            await self._service.close()
            await self._server.stop(None)

        self.run(stop(), 10.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        self._loop.close()


NUM_BIG_JOBS = 64


def test_a_subscriber_the_gcs_drops_starts_over_with_a_fresh_snapshot() -> None:
    head = SmallQueueHead(queue_size=3)
    release = threading.Event()
    seen: list[state.Change] = []

    def slow(change: state.Change) -> None:
        seen.append(change)
        release.wait(30)  # the first call blocks: changes pile up, here and in the GCS

    sub = state.Subscription(head, ("jobs",), slow, max_pending=1)  # type: ignore[arg-type]
    try:
        sub._start()
        wait_for(lambda: seen, what="the (empty) snapshot's marker")
        # Enough bytes to fill gRPC's flow-control window, so that the GCS's own queue of
        # 3 fills up behind it and the GCS disconnects this subscriber.
        big = "x" * (256 << 10)
        for _ in range(NUM_BIG_JOBS):
            head.run(head.gcs.register_job(gcs_pb2.JobRow(driver_pid=1, alive=True, entrypoint=big)), 10.0)
        release.set()
        wait_for(lambda: any(c.reset for c in seen) and seen[-1].snapshot_done,
                 what="a reset and a fresh snapshot after the GCS dropped the subscriber")
        after = seen[max(i for i, c in enumerate(seen) if c.reset) + 1:]
        jobs = [c.value for c in after if isinstance(c.value, state.JobState)]
        assert all(c.snapshot for c in after[:-1]) and len(jobs) == NUM_BIG_JOBS
        assert sub.restarts == 1 and sub.active
    finally:
        sub.close()
        head.close()
    assert not sub.active
