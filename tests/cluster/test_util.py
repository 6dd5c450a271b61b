"""``runtime.util.ActorPool`` and ``runtime.util.queue.Queue`` with Ray's semantics, on a
real cluster (issue 14, point 5)."""

from __future__ import annotations

import pytest

import runtime as rt
from runtime.util import ActorPool
from runtime.util.queue import Empty, Full, Queue

pytestmark = pytest.mark.cluster


@rt.remote
class Worker:
    def double(self, x: int) -> int:
        return 2 * x

    def fail_on(self, x: int, bad: int) -> int:
        if x == bad:
            raise ValueError(f"bad value {x}")
        return x


@rt.remote
def produce(q: Queue, n: int) -> int:
    for i in range(n):
        q.put(i)
    return n


@rt.remote
class Consumer:
    def take(self, q: Queue, n: int) -> list[int]:
        return [q.get(timeout=60) for _ in range(n)]


def test_map_keeps_order_and_map_unordered_gives_every_result(cluster: rt.ClusterInfo) -> None:
    pool = ActorPool([Worker.remote(), Worker.remote()])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(8))) == [2 * i for i in range(8)]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(8))) == [2 * i for i in range(8)]
    assert not pool.has_next()


def test_submit_more_than_actors_queues_the_rest_and_get_next_drains_in_order(
        cluster: rt.ClusterInfo) -> None:
    pool = ActorPool([Worker.remote()])
    for v in (1, 2, 3):
        pool.submit(lambda a, v: a.double.remote(v), v)
    assert not pool.has_free()  # one actor busy, two values waiting
    assert [pool.get_next(), pool.get_next(), pool.get_next()] == [2, 4, 6]
    assert pool.has_free() and not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()


def test_pop_idle_and_push_move_actors_in_and_out(cluster: rt.ClusterInfo) -> None:
    a, b = Worker.remote(), Worker.remote()
    pool = ActorPool([a])
    assert pool.pop_idle() is a and pool.pop_idle() is None
    pool.push(b)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(b)
    pool.submit(lambda actor, v: actor.double.remote(v), 5)
    assert pool.get_next_unordered() == 10


def test_an_error_in_one_item_surfaces_at_that_item(cluster: rt.ClusterInfo) -> None:
    pool = ActorPool([Worker.remote(), Worker.remote()])
    results = pool.map(lambda a, v: a.fail_on.remote(v, 2), range(4))
    assert next(results) == 0 and next(results) == 1
    with pytest.raises(ValueError, match="bad value 2"):
        next(results)
    # As in Ray, the generator ends with the error; the pool still owes the rest.
    assert pool.has_next() and pool.get_next() == 3


def test_a_queue_passes_items_between_tasks_actors_and_the_driver(cluster: rt.ClusterInfo) -> None:
    q = Queue()
    consumer = Consumer.remote()
    taken = consumer.take.remote(q, 5)  # blocks on the queue while the producer fills it
    assert rt.get(produce.remote(q, 5), timeout=60) == 5
    assert rt.get(taken, timeout=60) == [0, 1, 2, 3, 4]
    assert q.empty() and len(q) == 0
    q.put("from the driver")
    assert q.get(timeout=30) == "from the driver"
    q.shutdown()


def test_a_bounded_queue_raises_full_and_empty_like_the_standard_library(cluster: rt.ClusterInfo) -> None:
    q = Queue(maxsize=2)
    q.put_nowait_batch([1, 2])
    assert q.full() and q.size() == 2
    with pytest.raises(Full):
        q.put_nowait(3)
    with pytest.raises(Full):
        q.put(3, timeout=0.05)
    with pytest.raises(Full):
        q.put_nowait_batch([3])
    assert q.get_nowait_batch(2) == [1, 2]
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(timeout=0.05)
    with pytest.raises(Empty):
        q.get_nowait_batch(1)
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=-1)
    import queue as stdlib_queue
    assert issubclass(Empty, stdlib_queue.Empty) and issubclass(Full, stdlib_queue.Full)
    q.shutdown()


def test_the_async_forms_work_from_an_event_loop(cluster: rt.ClusterInfo) -> None:
    import asyncio

    q = Queue()

    async def roundtrip() -> int:
        await q.put_async(41)
        return int(await q.get_async(timeout=30)) + 1

    assert asyncio.run(roundtrip()) == 42
    q.shutdown()


@rt.remote
def traced(x: int) -> int:
    return x + 1


def test_timeline_writes_a_chrome_trace_of_the_tasks_that_ran(cluster: rt.ClusterInfo, tmp_path) -> None:
    import json

    from runtime import state
    from runtime.testing.wait import wait_for

    refs = [traced.remote(i) for i in range(5)]
    assert rt.get(refs, timeout=60) == [1, 2, 3, 4, 5]
    ids = {r.hex()[:32] for r in refs}
    # Task events reach the GCS in batches: wait until all five are there.
    wait_for(lambda: ids <= {t.task_id for t in state.list_tasks(name="traced", state="FINISHED")},
             timeout=30, what="the tasks' rows")
    out = tmp_path / "trace.json"
    assert rt.timeline(str(out)) is None
    events = json.loads(out.read_text())
    bars = [e for e in events if e["ph"] == "X" and e["args"]["task_id"] in ids]
    assert len(bars) == 5 and all(e["name"] == "traced" and e["dur"] >= 0 and e["tid"] > 0 for e in bars)
    assert any(e["ph"] == "M" and e["name"] == "process_name" for e in events)
    assert len([e for e in rt.timeline() or [] if e["ph"] == "X" and e["args"]["task_id"] in ids]) == 5


def test_a_dead_actor_leaves_the_pool_and_the_others_carry_on(cluster: rt.ClusterInfo) -> None:
    alive, doomed = Worker.remote(), Worker.remote()
    pool = ActorPool([alive, doomed])
    rt.kill(doomed)
    # Work goes to the most recently freed actor first: give it to each actor once.
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    results, errors = [], []
    for _ in range(2):
        try:
            results.append(pool.get_next_unordered())
        except rt.exceptions.ActorDiedError as e:
            errors.append(e)
    assert len(results) == 1 and len(errors) == 1
    # Only the live actor is left: everything after runs on it.
    assert list(pool.map(lambda a, v: a.double.remote(v), range(4))) == [0, 2, 4, 6]
    assert pool.pop_idle() is alive and pool.pop_idle() is None


def test_get_next_after_map_unordered_takes_later_submissions_as_ray_does(cluster: rt.ClusterInfo) -> None:
    pool = ActorPool([Worker.remote()])
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(3))) == [0, 2, 4]
    pool.submit(lambda a, v: a.double.remote(v), 10)
    assert pool.get_next() == 20
