"""Many nodes and bottom-up scheduling: spilling, placement by locality and resources,
late joiners, and failures of schedulers and nodes. Real processes throughout."""

from __future__ import annotations

import os
import pathlib
import signal
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest

import runtime as rt
from runtime import config, state
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.testing.wait import wait_for
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.cluster

FAST = config.load(heartbeat_ms=100, node_timeout_ms=1500, spill_threshold=2)


def _attach(cluster: LocalCluster) -> None:
    rt.init(address=cluster.address, token_file=str(cluster.token_file))


@pytest.fixture
def three_nodes(tmp_path: pathlib.Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster([NodeSpec(num_cpus=1), NodeSpec(num_cpus=2),
                            NodeSpec(num_cpus=2, resources={"sim": 4})],
                           settings=FAST, session_root=tmp_path / "s").start()
    try:
        _attach(cluster)
        yield cluster
    finally:
        rt.shutdown()
        cluster.stop()


@rt.remote
def where(flag: str | None = None) -> str:
    while flag is not None and not os.path.exists(flag):
        time.sleep(0.005)
    return rt.get_runtime_context().get_node_id()


def _node_ids(cluster: LocalCluster) -> list[str]:
    return [info["node_id"] for info in cluster.node_info]


def test_saturating_one_node_spills_and_everything_finishes(three_nodes: LocalCluster,
                                                             tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "go"
    refs = [where.remote(str(flag)) for _ in range(30)]
    # Nothing can finish before the flag exists, so the driver's node (1 CPU) must spill.
    wait_for(lambda: any(e.state == "SPILLED" for e in state.list_events(limit=500)),
             timeout=30, what="a SPILLED scheduler event")
    flag.touch()
    nodes = rt.get(refs, timeout=120)
    assert len(set(nodes)) >= 2, "tasks stayed on one node"
    spills = [e for e in state.list_events(limit=500) if e.state == "SPILLED"]
    assert all(e.detail for e in spills)
    assert {e.scheduler for e in spills} <= {"gs-0", "gs-1"}
    head = _node_ids(three_nodes)[0]
    wait_for(lambda: {n.node_id: n for n in state.list_nodes()}[head].tasks_spilled > 0,
             timeout=10, what="the head node's spilled-task counter in its heartbeat")


def test_a_resource_only_one_node_has_runs_there(three_nodes: LocalCluster) -> None:
    sim_node = _node_ids(three_nodes)[2]
    refs = [where.options(resources={"sim": 1}).remote() for _ in range(6)]
    assert set(rt.get(refs, timeout=60)) == {sim_node}


def test_task_goes_to_the_node_holding_its_large_input(three_nodes: LocalCluster,
                                                       tmp_path: pathlib.Path) -> None:
    sim_node = _node_ids(three_nodes)[2]

    @rt.remote(resources={"sim": 1})
    def make() -> np.ndarray:
        return np.ones(50 * 2**20 // 8)

    @rt.remote(num_cpus=1)
    def consume(a: np.ndarray) -> tuple[str, float]:
        return rt.get_runtime_context().get_node_id(), float(a.sum())

    big = make.remote()
    rt.wait([big], timeout=60)
    flag = tmp_path / "hold"
    head = _node_ids(three_nodes)[0]
    pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False))
    blockers = [pinned.remote(str(flag)) for _ in range(4)]  # the driver's node is busy
    node, total = rt.get(consume.remote(big), timeout=60)
    flag.touch()
    rt.get(blockers, timeout=60)
    assert total == 50 * 2**20 // 8
    assert node == sim_node


def test_cross_node_get_of_a_large_array_arrives_intact(three_nodes: LocalCluster) -> None:
    @rt.remote(resources={"sim": 1})
    def make() -> np.ndarray:
        return np.arange(100 * 2**20 // 8, dtype=np.float64)

    a = rt.get(make.remote(), timeout=120)
    assert a.shape == (100 * 2**20 // 8,) and a[-1] == 100 * 2**20 // 8 - 1
    assert float(a.sum()) == float(np.arange(100 * 2**20 // 8, dtype=np.float64).sum())


def test_infeasible_task_runs_when_a_fitting_node_joins(three_nodes: LocalCluster) -> None:
    ref = where.options(resources={"tpu": 1}).remote()
    ready, _ = rt.wait([ref], timeout=0)
    assert not ready
    handle = three_nodes.add_node(NodeSpec(num_cpus=1, resources={"tpu": 1}))
    assert rt.get(ref, timeout=60) == three_nodes.node_info[-1]["node_id"]
    assert handle.alive()


def test_killing_a_global_scheduler_loses_no_task(three_nodes: LocalCluster,
                                                  tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "go"
    refs = [where.remote(str(flag)) for _ in range(20)]
    wait_for(lambda: any(e.state == "SPILLED" for e in state.list_events(limit=500)),
             timeout=30, what="a spill")
    victim = three_nodes.schedulers[0]
    victim.stop()
    more = [where.remote(str(flag)) for _ in range(20)]
    flag.touch()
    assert len(rt.get(refs + more, timeout=120)) == 40


def test_killing_a_node_reruns_its_tasks_elsewhere(three_nodes: LocalCluster,
                                                   tmp_path: pathlib.Path) -> None:
    victim_id = _node_ids(three_nodes)[1]
    flag = tmp_path / "go"
    refs = [where.remote(str(flag)) for _ in range(12)]
    wait_for(lambda: any(e.state == "SPILLED" and e.target_node_id == victim_id
                         for e in state.list_events(limit=500)),
             timeout=30, what="a task spilled to node 1")
    three_nodes.nodes[1].popen.send_signal(signal.SIGKILL)
    # Its workers go with it (they exit when their node's stream breaks).
    wait_for(lambda: not any(n.alive for n in state.list_nodes() if n.node_id == victim_id),
             timeout=30, what="node 1 marked dead")
    flag.touch()
    # None could finish before the flag existed, so every one ran after the kill: elsewhere.
    ready, _ = rt.wait(refs, num_returns=len(refs), timeout=30)
    if len(ready) < len(refs):
        os.kill(three_nodes.nodes[0].pid, signal.SIGUSR1)
        time.sleep(0.5)
        print((three_nodes.session_dir / "logs" / "node-0.log").read_text()[-3000:])
        for t in state.list_tasks(limit=30):
            print(t.task_id[:6], t.state, t.node_id[:6], t.attempt, t.detail[:60])
    ran_on = rt.get(refs, timeout=60)
    assert len(ran_on) == 12 and victim_id not in ran_on
    dead = [n for n in rt.nodes() if n["NodeID"] == victim_id]
    assert dead and dead[0]["Alive"] is False
    wait_for(lambda: not psutil.pid_exists(three_nodes.nodes[1].pid)
             or psutil.Process(three_nodes.nodes[1].pid).status() == psutil.STATUS_ZOMBIE,
             timeout=10, what="the killed node process gone")


def test_gpu_tasks_go_to_the_only_node_with_gpus(tmp_path: pathlib.Path) -> None:
    cluster = LocalCluster([NodeSpec(num_cpus=1), NodeSpec(num_cpus=1),
                            NodeSpec(num_cpus=1, num_gpus=2)],
                           session_root=tmp_path / "s").start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file))

        @rt.remote(num_gpus=1, num_cpus=0)
        def where() -> tuple[str, list[int]]:
            return rt.get_runtime_context().get_node_id(), rt.get_gpu_ids()

        results = rt.get([where.remote() for _ in range(4)], timeout=60)
        gpu_node = cluster.node_info[2]["node_id"]
        assert {node for node, _ in results} == {gpu_node}
        assert all(len(ids) == 1 and ids[0] in (0, 1) for _, ids in results)
    finally:
        rt.shutdown()
        cluster.stop()


def test_stopping_a_cluster_removes_the_store_of_a_node_that_was_killed(tmp_path: pathlib.Path) -> None:
    cluster = LocalCluster([NodeSpec(num_cpus=1)], session_root=tmp_path / "s").start()
    try:
        shm_dir = pathlib.Path(cluster.node_info[0]["shm_dir"])
        assert shm_dir.is_dir()
        cluster.nodes[0].popen.send_signal(signal.SIGKILL)  # no chance to clean up itself
        cluster.nodes[0].popen.wait()
        assert shm_dir.is_dir()
    finally:
        cluster.stop()
    assert not shm_dir.exists()


def test_idle_workers_that_die_are_replaced_up_to_the_warm_pool(tmp_path: pathlib.Path) -> None:
    """Issue 12: idle workers killed left the pool empty until new work came."""
    cluster = LocalCluster([NodeSpec(num_cpus=2)], session_root=tmp_path / "s").start()
    try:
        node = psutil.Process(cluster.nodes[0].pid)

        def workers() -> set[int]:
            found = set()
            for p in node.children():
                try:
                    if p.status() != psutil.STATUS_ZOMBIE and "runtime.worker" in " ".join(p.cmdline()):
                        found.add(p.pid)
                except psutil.Error:  # exited meanwhile
                    continue
            return found

        def two(excluding: set[int]) -> set[int] | None:
            found = workers()
            return found if len(found) == 2 and not found & excluding else None

        first = wait_for(lambda: two(set()), timeout=30, what="the two prestarted workers")
        for pid in first:
            os.kill(pid, 9)
        again = wait_for(lambda: two(first), timeout=30, what="two new workers in place of the killed ones")
        rt.init(address=cluster.address, token_file=str(cluster.token_file))

        @rt.remote
        def pid() -> int:
            return os.getpid()

        assert rt.get(pid.remote(), timeout=30) in again
    finally:
        rt.shutdown()
        cluster.stop()
