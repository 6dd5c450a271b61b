"""Scheduling across real nodes: actors placed bottom-up like tasks, called from any node,
restarted elsewhere when their node dies; the strategies ("SPREAD", node affinity); and
spilling that keeps what a node will run soon. Three node processes of 2 CPUs each."""

from __future__ import annotations

import os
import pathlib
import signal
import time
from collections import Counter
from collections.abc import Iterator

import pytest

import runtime as rt
from runtime import config, state
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.testing.wait import wait_for
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.cluster

FAST = config.load(heartbeat_ms=100, node_timeout_ms=1500)


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[LocalCluster]:
    c = LocalCluster([NodeSpec(num_cpus=2), NodeSpec(num_cpus=2), NodeSpec(num_cpus=2, resources={"sim": 1})],
                     settings=FAST, session_root=tmp_path / "s").start()
    try:
        rt.init(address=c.address, token_file=str(c.token_file))
        yield c
    finally:
        rt.shutdown()
        c.stop()


def _ids(cluster: LocalCluster) -> list[str]:
    return [info["node_id"] for info in cluster.node_info]


@rt.remote(num_cpus=1)
class Where:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def node(self) -> str:
        return rt.get_runtime_context().get_node_id()

    def add(self, i: int) -> int:
        self.calls.append(i)
        return i

    def seen(self) -> list[int]:
        return self.calls


@rt.remote
def where(flag: str | None = None) -> str:
    while flag is not None and not os.path.exists(flag):
        time.sleep(0.005)
    return rt.get_runtime_context().get_node_id()


# ---- actors ---------------------------------------------------------------------------


def test_six_one_cpu_actors_spread_over_three_two_cpu_nodes(cluster: LocalCluster) -> None:
    actors = [Where.remote() for _ in range(6)]
    nodes = rt.get([a.node.remote() for a in actors], timeout=60)
    assert Counter(nodes) == dict.fromkeys(_ids(cluster), 2)
    # Where each one lives shows in rt.state, as the node that runs it.
    wait_for(lambda: {a.actor_id: a.node_id for a in state.list_actors(state="ALIVE")}
             == {h.actor_id: n for h, n in zip(actors, nodes, strict=True)},
             timeout=10, what="each actor's node in rt.state")


def test_an_actor_needing_a_resource_only_another_node_has_is_created_there(cluster: LocalCluster) -> None:
    sim = Where.options(resources={"sim": 1}).remote()
    assert rt.get(sim.node.remote(), timeout=60) == _ids(cluster)[2]
    assert rt.get([sim.add.remote(i) for i in range(20)], timeout=60) == list(range(20))


def test_calls_from_another_node_arrive_in_order(cluster: LocalCluster) -> None:
    head, other = _ids(cluster)[0], _ids(cluster)[1]
    counter = Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
    assert rt.get(counter.node.remote(), timeout=60) == head

    @rt.remote(scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False))
    def caller(actor: rt.ActorHandle, start: int) -> tuple[str, list[int]]:
        got = rt.get([actor.add.remote(start + i) for i in range(100)])
        return rt.get_runtime_context().get_node_id(), got

    node, got = rt.get(caller.remote(counter, 1000), timeout=60)
    assert node == other and got == list(range(1000, 1100))
    assert rt.get(counter.seen.remote(), timeout=30) == list(range(1000, 1100))


def test_killing_an_actor_from_another_node(cluster: LocalCluster) -> None:
    target = _ids(cluster)[1]
    actor = Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False)).remote()
    assert rt.get(actor.node.remote(), timeout=60) == target
    rt.kill(actor)
    with pytest.raises(rt.exceptions.ActorDiedError):
        rt.get(actor.node.remote(), timeout=60)


@pytest.mark.slow
def test_an_actor_whose_node_dies_restarts_on_another_and_takes_calls_again(cluster: LocalCluster) -> None:
    victim = _ids(cluster)[1]
    actor = Where.options(max_restarts=1, max_task_retries=1,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(victim, soft=True)).remote()
    assert rt.get(actor.node.remote(), timeout=60) == victim
    cluster.nodes[1].popen.send_signal(signal.SIGKILL)
    wait_for(lambda: not any(n.alive for n in state.list_nodes() if n.node_id == victim),
             timeout=30, what="the node marked dead")
    moved = rt.get(actor.node.remote(), timeout=60)
    assert moved != victim and moved in _ids(cluster)
    wait_for(lambda: [(a.state, a.num_restarts) for a in state.list_actors() if a.actor_id == actor.actor_id]
             == [("ALIVE", 1)], timeout=10, what="the actor alive again after one restart")


# ---- strategies -----------------------------------------------------------------------


def test_spread_puts_a_burst_of_tasks_on_every_node(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "go"
    refs = [where.options(scheduling_strategy="SPREAD").remote(str(flag)) for _ in range(6)]
    wait_for(lambda: all(n.resources_available.get("CPU") == 0 for n in state.list_nodes()), timeout=60,
             what="every CPU busy")
    flag.touch()
    assert Counter(rt.get(refs, timeout=60)) == dict.fromkeys(_ids(cluster), 2)


def test_spread_actors_land_on_distinct_nodes(cluster: LocalCluster) -> None:
    actors = [Where.options(num_cpus=0, scheduling_strategy="SPREAD").remote() for _ in range(3)]
    assert sorted(rt.get([a.node.remote() for a in actors], timeout=60)) == sorted(_ids(cluster))


def test_node_affinity_hard_runs_only_there_and_fails_for_an_unknown_node(cluster: LocalCluster) -> None:
    target = _ids(cluster)[2]
    pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False))
    assert set(rt.get([pinned.remote() for _ in range(8)], timeout=60)) == {target}
    nowhere = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy("ab" * 16, soft=False))
    with pytest.raises(rt.exceptions.TaskUnschedulableError, match="not in the cluster"):
        rt.get(nowhere.remote(), timeout=60)
    soft = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy("ab" * 16, soft=True))
    assert rt.get(soft.remote(), timeout=60) in _ids(cluster)


def test_an_actor_with_hard_affinity_to_a_dead_node_is_unschedulable(cluster: LocalCluster) -> None:
    victim = _ids(cluster)[1]
    cluster.nodes[1].popen.send_signal(signal.SIGKILL)
    wait_for(lambda: not any(n.alive for n in state.list_nodes() if n.node_id == victim),
             timeout=30, what="the node marked dead")
    actor = Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim, soft=False)).remote()
    with pytest.raises(rt.exceptions.ActorDiedError, match="is dead"):
        rt.get(actor.node.remote(), timeout=60)


def test_bad_strategies_are_refused_at_the_call_site(cluster: LocalCluster) -> None:
    with pytest.raises(ValueError, match="'DEFAULT', 'SPREAD'"):
        where.options(scheduling_strategy="PACK")
    with pytest.raises(TypeError, match="scheduling_strategy"):
        where.options(scheduling_strategy=3)
    with pytest.raises(ValueError, match="node id in hex"):
        NodeAffinitySchedulingStrategy("not-hex", soft=False)


# ---- spilling that helps --------------------------------------------------------------


def test_a_busy_node_keeps_its_tasks_when_its_peers_are_busier(cluster: LocalCluster,
                                                              tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "go"
    head, *peers = _ids(cluster)
    # Each peer runs two tasks and has eight more queued (five rounds of its 2 CPUs).
    fill = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(str(flag))
            for n in peers for _ in range(10)]

    def peers_queued() -> bool:
        rows = {n.node_id: n for n in state.list_nodes()}
        return all(rows[n].queue_length >= 8 and rows[n].resources_available.get("CPU") == 0 for n in peers)

    wait_for(peers_queued, timeout=60, what="both peers' queues in their heartbeats")
    before = {n.node_id: n.tasks_spilled for n in state.list_nodes()}[head]
    burst = [where.remote(str(flag)) for _ in range(8)]  # four rounds here at most: none spills
    wait_for(lambda: {n.node_id: n.queue_length for n in state.list_nodes()}[head] >= 6, timeout=60,
             what="the burst queued on the head")
    flag.touch()
    ran = rt.get(burst, timeout=120)
    assert len(rt.get(fill, timeout=120)) == 20
    assert set(ran) == {head}
    spilled = {n.node_id: n.tasks_spilled for n in state.list_nodes()}[head] - before
    assert spilled == 0
