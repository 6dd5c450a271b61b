"""Objects whose every copy is lost: rebuilt from lineage, or an ObjectLostError that says
why not (issue 12, points 1 and 2). Real processes: the node holding the copies is killed.

Tasks log each execution to a file, so the tests count how many times each one ran.
"""

from __future__ import annotations

import pathlib
import signal
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

import runtime as rt
from runtime import config, state
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.testing.wait import wait_for
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.cluster

FAST = config.load(heartbeat_ms=100, node_timeout_ms=1500)
#: Large enough to live in the node's shared-memory store, not inline in messages.
N = 2**17


@pytest.fixture
def three_nodes(tmp_path: pathlib.Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster([NodeSpec(num_cpus=1), NodeSpec(num_cpus=2), NodeSpec(num_cpus=2)],
                           settings=FAST, session_root=tmp_path / "s").start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        yield cluster
    finally:
        rt.shutdown()
        cluster.stop()


def _kill_node(cluster: LocalCluster, index: int) -> None:
    node_id = cluster.node_info[index]["node_id"]
    cluster.nodes[index].popen.send_signal(signal.SIGKILL)
    wait_for(lambda: not any(n.alive for n in state.list_nodes() if n.node_id == node_id),
             timeout=30, what=f"node {index} marked dead")


def _on(cluster: LocalCluster, index: int, soft: bool = True) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(cluster.node_info[index]["node_id"], soft=soft)


def _runs(log: pathlib.Path) -> Counter[str]:
    return Counter(log.read_text().split())


@rt.remote(max_retries=2)
def link(prev: np.ndarray | None, i: int, log: str) -> np.ndarray:
    with open(log, "a") as f:
        f.write(f"{i}\n")
    return (np.zeros(N) if prev is None else prev) + 1


@rt.remote
def total(a: np.ndarray) -> float:
    return float(a.sum())


def test_a_chain_of_ten_whose_node_died_is_rebuilt_on_get(three_nodes: LocalCluster,
                                                          tmp_path: pathlib.Path) -> None:
    log = tmp_path / "runs"
    on_b = link.options(scheduling_strategy=_on(three_nodes, 1))
    x = None
    for i in range(10):
        x = on_b.remote(x, i, str(log))
    assert x is not None
    rt.wait([x], timeout=60)  # ready on node 1; nothing was copied to the driver's node
    assert _runs(log) == Counter(str(i) for i in range(10))
    _kill_node(three_nodes, 1)

    value = rt.get(x, timeout=60)
    assert value.shape == (N,) and np.all(value == 10)
    # Every link ran once more, on another node: its inputs were lost with node 1 too.
    assert _runs(log) == Counter({str(i): 2 for i in range(10)})
    # Events reach the GCS in batches: wait for this one's.
    wait_for(lambda: (r := state.get_task(x)) is not None and r.state == "FINISHED",
             timeout=30, what="the rebuild's FINISHED event")
    row = state.get_task(x)
    assert row is not None and row.attempt == 1
    assert any(e.state == "RETRYING" and "rebuild lost object" in e.detail for e in row.history)
    assert row.node_id != three_nodes.node_info[1]["node_id"]


def test_a_task_that_needs_a_lost_object_rebuilds_it_first(three_nodes: LocalCluster,
                                                           tmp_path: pathlib.Path) -> None:
    log = tmp_path / "runs"
    on_b = link.options(scheduling_strategy=_on(three_nodes, 1))
    x = on_b.remote(on_b.remote(None, 0, str(log)), 1, str(log))
    rt.wait([x], timeout=60)
    _kill_node(three_nodes, 1)
    assert rt.get(total.remote(x), timeout=60) == 2 * N
    assert _runs(log) == Counter({"0": 2, "1": 2})


def test_a_lost_object_whose_task_has_no_retries_left_raises_object_lost(
        three_nodes: LocalCluster, tmp_path: pathlib.Path) -> None:
    log = tmp_path / "runs"
    x = link.options(scheduling_strategy=_on(three_nodes, 1), max_retries=0).remote(None, 0, str(log))
    rt.wait([x], timeout=60)
    victim = three_nodes.node_info[1]["node_id"]
    _kill_node(three_nodes, 1)
    with pytest.raises(rt.exceptions.ObjectLostError) as info:
        rt.get(x, timeout=30)
    msg = str(info.value)
    assert x.hex() in msg and "link()" in msg and victim[:12] in msg and "max_retries=0" in msg
    # A task that takes it fails with that error as its cause: a TaskError that is also an
    # ObjectLostError, naming the object and why it cannot be rebuilt.
    with pytest.raises(rt.exceptions.ObjectLostError) as dep:
        rt.get(total.remote(x), timeout=30)
    err = dep.value
    assert isinstance(err, rt.exceptions.TaskError) and "total()" in str(err)
    assert x.hex() in str(err) and "max_retries=0" in str(err) and "cannot be rebuilt" in str(err)
    cause = err.cause
    assert type(cause) is rt.exceptions.ObjectLostError and cause.object_id == x.hex()
    assert "max_retries=0" in str(cause) and victim[:12] in str(cause)
    assert err.__cause__ is cause
    assert _runs(log) == Counter({"0": 1})


@rt.remote
def put_inside() -> list[rt.ObjectRef]:
    return [rt.put(np.ones(N)), rt.put("small")]


def test_an_object_put_by_a_task_on_a_node_that_died_raises_object_lost_at_once(
        three_nodes: LocalCluster) -> None:
    inner = rt.get(put_inside.options(scheduling_strategy=_on(three_nodes, 1, soft=False)).remote(),
                   timeout=60)
    victim = three_nodes.node_info[1]["node_id"]
    _kill_node(three_nodes, 1)
    # No timeout needed: the error is there as soon as the node is known dead.
    with pytest.raises(rt.exceptions.ObjectLostError) as info:
        rt.get(inner[0])
    msg = str(info.value)
    assert inner[0].hex() in msg and "put()" in msg and victim[:12] in msg
    assert rt.get(inner[1]) == "small"  # small objects came home with the result


def test_an_object_put_by_a_task_on_another_node_reads_while_that_node_lives(
        three_nodes: LocalCluster) -> None:
    inner = rt.get(put_inside.options(scheduling_strategy=_on(three_nodes, 2, soft=False)).remote(),
                   timeout=60)
    assert float(rt.get(inner[0], timeout=60).sum()) == N
    assert rt.get(inner[1], timeout=60) == "small"
    assert rt.get(total.remote(inner[0]), timeout=60) == N
