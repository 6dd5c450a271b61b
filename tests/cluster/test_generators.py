"""Generator tasks and actor methods as Ray 2.60 has them (issue 14, point 4): refs yielded
as items are produced, ``async for``, an exception at its item, ``num_returns=N``, items
read while the task runs, on one node and spilled to another."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from collections.abc import Iterator

import numpy as np
import pytest

import runtime as rt
from runtime import config
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.cluster


@rt.remote
def count(n: int) -> Iterator[int]:
    yield from range(n)


@rt.remote
def fails_at(n: int, bad: int) -> Iterator[int]:
    for i in range(n):
        if i == bad:
            raise ValueError(f"item {i} is bad")
        yield i


@rt.remote
def gated(flag: str) -> Iterator[str]:
    yield "first"
    while not os.path.exists(flag):  # the second item waits for the consumer's flag
        time.sleep(0.01)
    yield "second"


@rt.remote(num_returns=3)
def three() -> Iterator[int]:
    yield 1
    yield 2
    yield 3


@rt.remote
def big_items(n: int) -> Iterator[np.ndarray]:
    for i in range(n):
        yield np.full(2**17, i)


@rt.remote
class Source:
    def items(self, n: int) -> Iterator[int]:
        for i in range(n):
            yield i * 10

    async def async_items(self, n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            await asyncio.sleep(0)
            yield i


@pytest.fixture
def two_nodes(tmp_path: pathlib.Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster([NodeSpec(num_cpus=1), NodeSpec(num_cpus=2)],
                           settings=config.load(heartbeat_ms=100), session_root=tmp_path / "s").start()
    try:
        yield cluster
    finally:
        rt.shutdown()
        cluster.stop()


def test_a_generator_running_on_another_node_streams_home(two_nodes: LocalCluster) -> None:
    assert not rt.is_initialized()
    rt.init(address=two_nodes.address, token_file=str(two_nodes.token_file))
    other = two_nodes.node_info[1]["node_id"]
    on_other = NodeAffinitySchedulingStrategy(other, soft=False)
    gen = big_items.options(scheduling_strategy=on_other).remote(3)
    values = [float(rt.get(r, timeout=60).mean()) for r in gen]
    assert values == [0.0, 1.0, 2.0]
    gen = fails_at.options(scheduling_strategy=on_other).remote(3, 1)
    assert rt.get(next(gen), timeout=60) == 0
    with pytest.raises(ValueError, match="item 1 is bad"):
        rt.get(next(gen), timeout=60)


def test_a_generator_task_yields_refs_in_order(cluster: rt.ClusterInfo) -> None:
    gen = count.remote(5)
    assert isinstance(gen, rt.ObjectRefGenerator)
    refs = list(gen)
    assert all(isinstance(r, rt.ObjectRef) for r in refs) and rt.get(refs) == [0, 1, 2, 3, 4]
    assert gen.is_finished()
    assert list(count.remote(0)) == []


def test_an_exception_surfaces_at_its_item_then_the_stream_ends(cluster: rt.ClusterInfo) -> None:
    gen = fails_at.remote(5, 2)
    assert [rt.get(next(gen)), rt.get(next(gen))] == [0, 1]
    with pytest.raises(ValueError, match="item 2 is bad"):
        rt.get(next(gen))
    with pytest.raises(StopIteration):
        next(gen)


def test_items_are_read_while_the_task_still_runs(cluster: rt.ClusterInfo, tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "go"
    gen = gated.remote(str(flag))
    # The task cannot finish before the flag exists: the first item comes first.
    assert rt.get(next(gen), timeout=60) == "first"
    flag.touch()
    assert rt.get(next(gen), timeout=60) == "second"
    with pytest.raises(StopIteration):
        next(gen)


def test_num_returns_with_a_generator_gives_that_many_refs(cluster: rt.ClusterInfo) -> None:
    refs = three.remote()
    assert isinstance(refs, list) and rt.get(refs) == [1, 2, 3]


def test_large_items_live_in_the_store_and_async_for_works(cluster: rt.ClusterInfo) -> None:
    async def consume() -> list[float]:
        out = []
        async for ref in big_items.remote(3):
            out.append(float((await ref).mean()))
        return out

    assert asyncio.run(consume()) == [0.0, 1.0, 2.0]


def test_actor_methods_stream_too(cluster: rt.ClusterInfo) -> None:
    s = Source.remote()
    assert rt.get(list(s.items.remote(4))) == [0, 10, 20, 30]
    assert rt.get(list(s.async_items.remote(3))) == [0, 1, 2]
    rt.kill(s)


# ---- completed(): a ref ready when the generator task ended (Ray 2.x) -------------------

def test_completed_is_ready_when_the_task_ended_and_items_stay_readable(
        cluster: rt.ClusterInfo, tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "go"
    gen = gated.remote(str(flag))
    done = gen.completed()
    assert gen.completed() == done, "every call returns the same ref"
    # The task waits for the flag after its first item: it cannot have ended yet.
    assert rt.get(next(gen), timeout=60) == "first"
    ready, _ = rt.wait([done], timeout=0)
    assert ready == []
    flag.touch()
    assert rt.get(done, timeout=60) is None
    assert [rt.get(ref, timeout=60) for ref in gen] == ["second"]
    assert gen.is_finished()


def test_completed_before_taking_any_item_keeps_every_item(cluster: rt.ClusterInfo) -> None:
    gen = count.remote(4)
    assert rt.get(gen.completed(), timeout=60) is None
    assert rt.get(list(gen), timeout=60) == [0, 1, 2, 3]


def test_completed_after_the_last_item_and_of_an_empty_stream(cluster: rt.ClusterInfo) -> None:
    gen = count.remote(2)
    assert rt.get(list(gen), timeout=60) == [0, 1]
    assert rt.get(gen.completed(), timeout=60) is None
    empty = count.remote(0)
    assert rt.get(empty.completed(), timeout=60) is None
    assert list(empty) == []


def test_completed_raises_the_generators_error(cluster: rt.ClusterInfo) -> None:
    gen = fails_at.remote(5, 2)
    with pytest.raises(ValueError, match="item 2 is bad"):
        rt.get(gen.completed(), timeout=60)
    # The items before the error are still there, then the error, then the end.
    assert [rt.get(next(gen)), rt.get(next(gen))] == [0, 1]
    with pytest.raises(ValueError, match="item 2 is bad"):
        rt.get(next(gen))
    with pytest.raises(StopIteration):
        next(gen)


def test_completed_of_an_actor_method_and_awaited(cluster: rt.ClusterInfo) -> None:
    s = Source.remote()
    gen = s.items.remote(3)

    async def finish() -> None:
        await gen.completed()

    asyncio.run(finish())
    assert rt.get(list(gen), timeout=60) == [0, 10, 20]
    rt.kill(s)


def test_wait_takes_generators_which_are_ready_when_their_next_item_is(
        cluster: rt.ClusterInfo, tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "go"
    gen = gated.remote(str(flag))
    plain = count.remote(2)
    ready, not_ready = rt.wait([gen, plain], num_returns=2, timeout=60)
    assert ready == [gen, plain] and not_ready == []
    assert rt.get(next(gen), timeout=60) == "first"
    ready, not_ready = rt.wait([gen], timeout=0)  # the second item waits for the flag
    assert ready == [] and not_ready == [gen]
    flag.touch()
    assert rt.wait([gen], timeout=60)[0] == [gen]
    assert rt.get(next(gen), timeout=60) == "second"
    assert rt.wait([gen], timeout=60)[0] == [gen]  # the end of the stream is ready too
    with pytest.raises(StopIteration):
        next(gen)
