"""The scale simulation (``runtime.sim``) on small clusters: the real node, scheduler and
GCS state machines driven on simulated time. Costs are fixed per call (``FixedCost``), so
every run is repeatable to the last digit; nothing here looks at wall-clock time."""

from __future__ import annotations

import dataclasses
import math

import pytest

from runtime.sim import FixedCost, MeasuredCost, SimCluster, SimConfig, SimResult, Workload, simulate
from runtime.sim.loop import EventLoop, Network, Server
from runtime.sim.report import HEADER, conclude, row

#: 10 µs per call everywhere, unless a test says otherwise.
FIXED = FixedCost(default_s=10e-6)


def _config(nodes: int = 4, replicas: int = 1, *, tasks: int = 30, cost: FixedCost = FIXED,
            **workload: float) -> SimConfig:
    return SimConfig(nodes=nodes, replicas=replicas, seed=7, cost=cost, publish_s=1e-6,
                     workload=Workload(tasks_per_node=tasks, **workload))  # type: ignore[arg-type]


def _run(config: SimConfig) -> tuple[SimCluster, SimResult]:
    cluster = SimCluster(config)
    return cluster, cluster.run()


def test_every_task_starts_and_finishes_exactly_once() -> None:
    cluster, result = _run(_config(nodes=4, replicas=2, hot_share=0.25))
    records = cluster.book.tasks
    assert result.complete and len(records) == result.tasks == result.done
    assert {r.starts for r in records.values()} == {1}, "a task started twice or never"
    assert {r.runs for r in records.values()} == {1}, "a task ran to its end twice or never"
    assert {r.deliveries for r in records.values()} == {1}, "a result reached its owner twice or never"
    for node in cluster.nodes:  # nothing is left behind on any node
        state = node.state
        assert not state.tasks and state.queue_length() == 0
        assert not state.spill.forwarded and not state.spill.spilled_to
    assert cluster.book.recorded >= result.tasks, "the GCS has not recorded every task's end"


def test_spilled_tasks_run_elsewhere_and_their_results_come_home() -> None:
    cluster, result = _run(_config(nodes=4, replicas=1, hot_share=0.25, hot_load=3.0))
    spilled = [r for r in cluster.book.tasks.values() if r.spills]
    away = [r for r in spilled if r.ran_on != r.home]
    assert result.spilled == len(spilled) > 0 and away
    # A result reaches its owner only through the home node's driver session.
    assert all(r.deliveries == 1 and r.done >= r.started for r in away)
    assert result.ran_elsewhere == len([r for r in cluster.book.tasks.values() if r.ran_on != r.home])


def test_a_node_short_of_cpus_spills_and_the_others_take_the_work() -> None:
    cluster, _ = _run(_config(nodes=4, replicas=1, hot_share=0.25, hot_load=3.0))
    hot = [r for r in cluster.book.tasks.values() if r.home == 0]
    ran_on = {r.ran_on for r in hot}
    assert ran_on - {0}, "no other node ran the hot node's tasks"
    assert sum(r.ran_on != 0 for r in hot) / len(hot) > 0.2
    normal = [r for r in cluster.book.tasks.values() if r.home != 0]
    assert sum(r.spills > 0 for r in normal) < sum(r.spills > 0 for r in hot)


def test_more_nodes_give_more_throughput_at_the_same_load_per_node() -> None:
    small = simulate(_config(nodes=2, hot_share=0.0))
    large = simulate(_config(nodes=8, hot_share=0.0))
    assert small.complete and large.complete
    assert large.offered == 4 * small.offered
    assert large.throughput > 3 * small.throughput


def test_a_second_replica_helps_when_one_is_saturated() -> None:
    slow_placing = FixedCost(default_s=10e-6, per_call={"replica.place": 5e-3})  # 200 placements/s
    one = simulate(_config(nodes=6, replicas=1, tasks=60, cost=slow_placing, hot_share=0.34, hot_load=3.0))
    two = simulate(_config(nodes=6, replicas=2, tasks=60, cost=slow_placing, hot_share=0.34, hot_load=3.0))
    assert one.bottleneck() == "gs-0" and one.loads["replica"].max_util > 0.9
    assert two.spilled_throughput > 1.5 * one.spilled_throughput
    assert two.throughput > one.throughput
    assert two.latency_p99_s < one.latency_p99_s


def test_a_seed_gives_the_same_figures() -> None:
    def figures(r: SimResult) -> dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(r).items() if k != "wall_s"}
    first = simulate(_config(nodes=5, replicas=2, hot_share=0.2))
    again = simulate(_config(nodes=5, replicas=2, hot_share=0.2))
    other = simulate(dataclasses.replace(_config(nodes=5, replicas=2, hot_share=0.2), seed=8))
    assert figures(first) == figures(again)
    assert figures(first) != figures(other)


def test_a_run_stopped_early_counts_unstarted_tasks_as_never() -> None:
    slow = FixedCost(default_s=10e-6, per_call={"replica.place": 50e-3})
    config = dataclasses.replace(_config(nodes=3, tasks=40, cost=slow, hot_share=0.34, hot_load=3.0),
                                 stop_after=1.0)
    result = simulate(config)
    assert not result.complete and result.done < result.tasks
    assert math.isinf(result.latency_p99_s)
    assert result.bottleneck() == "gs-0"


def test_measured_costs_are_charged_from_the_real_calls() -> None:
    result = simulate(SimConfig(nodes=3, replicas=1, seed=1, cost=MeasuredCost(),
                                workload=Workload(tasks_per_node=20, hot_share=0.34, hot_load=3.0)))
    assert result.complete
    assert result.cost("node", "submit") > 0 and result.cost("gcs", "report_events") > 0
    assert result.cost("replica", "place") > 0


def test_the_report_names_what_stopped_growth() -> None:
    slow_placing = FixedCost(default_s=10e-6, per_call={"replica.place": 5e-3})
    runs = [simulate(_config(nodes=n, replicas=r, tasks=40, cost=slow_placing, hot_share=0.34, hot_load=3.0))
            for n in (3, 6) for r in (1, 2)]
    assert len(row(runs[0]).split()) == len(HEADER.split())
    text = conclude(runs)
    assert "replicas are saturated" in text and "GCS" in text


def test_a_server_charges_each_call_and_serves_in_order() -> None:
    loop = EventLoop()
    server = Server(loop, "s", "node", FixedCost(default_s=1.0))
    done: list[tuple[str, float]] = []
    for name in ("a", "b"):
        loop.call_at(0.5, lambda name=name: server.post(
            lambda: (server.call(name, lambda: None), done.append((name, server.free_at)))))
    loop.run()
    assert done == [("a", 1.5), ("b", 2.5)]
    assert server.busy_s == 2.0 and server.max_wait_s == 1.0


def test_a_link_delivers_in_order_despite_jitter() -> None:
    import random
    net = Network(random.Random(1), delay_s=1e-4, jitter_s=1e-4, local_s=0.0)
    arrivals = [net.arrival("a", "b", i * 1e-6) for i in range(200)]
    assert arrivals == sorted(arrivals)
    with pytest.raises(ValueError, match="jitter"):
        Network(random.Random(1), delay_s=1e-4, jitter_s=1e-3, local_s=0.0)
