"""A whole simulated cluster: nodes, global-scheduler replicas and the GCS, wired together
on one event loop, and a run of the workload on it.

:class:`SimConfig` says what to build and how to charge it; :class:`SimCluster` builds it
(registering every node with the GCS, giving replicas and nodes their first snapshot of
the ``nodes`` table, prestarting one worker per CPU: all before time 0 and not charged),
runs the drivers until every task is done at its owner and every task event is applied
by the GCS, and returns a :class:`SimResult`. ``simulate(config)`` does both.

Examples
--------
>>> from runtime.sim.loop import FixedCost
>>> result = simulate(SimConfig(nodes=2, replicas=1, workload=Workload(tasks_per_node=20),
...                             cost=FixedCost(), publish_s=1e-6))
>>> result.done == result.tasks
True
"""

from __future__ import annotations

import gc
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.sim import adapter
from runtime.sim.adapter import Settings, Spill
from runtime.sim.gcs import RowFeed, SimGcs
from runtime.sim.loop import CostModel, EventLoop, MeasuredCost, Network, Server
from runtime.sim.metrics import Book, KindLoad, SimResult, percentile
from runtime.sim.node import SimNode
from runtime.sim.replica import SimReplica
from runtime.sim.workload import Workload

__all__ = ["SimCluster", "SimConfig", "simulate"]


@dataclass(frozen=True)
class SimConfig:
    """What to simulate and how to charge it."""

    nodes: int = 10
    replicas: int = 1
    workload: Workload = field(default_factory=Workload)
    seed: int = 0
    #: GCS processes: 1 as cellray runs it; N for the paper's one process per shard.
    gcs_processes: int = 1
    #: How the measured time of each real call is charged (``FixedCost`` for repeatable runs).
    cost: CostModel = field(default_factory=MeasuredCost)
    #: One-way delay between processes, and its jitter (uniform ±), in seconds.
    net_delay_s: float = 100e-6
    net_jitter_s: float = 20e-6
    #: One-way delay between a node and its own drivers and workers.
    local_delay_s: float = 20e-6
    #: A worker process asked for connects this long after.
    worker_start_s: float = 0.05
    #: Seconds the GCS spends per change of the ``nodes`` table per subscriber; None:
    #: measured once on the real ``Publisher`` (``adapter.publish_cost_s``), or 1 µs when
    #: ``cost`` is fixed.
    publish_s: float | None = None
    #: Nodes follow the ``nodes`` table (every heartbeat row of every peer), as
    #: ``Peers.watch_nodes`` does; their spill decisions read those rows.
    nodes_follow_rows: bool = True
    #: Nodes read the rows that reached them every this many seconds.
    row_tick_s: float = 0.05
    #: The replicas' placement policy.
    policy: str = "locality"
    #: Node and replica settings (heartbeat_ms, event_flush_ms, spill_threshold, ...).
    settings: Settings = field(default_factory=Settings)
    #: End the run this many submission windows after it started, done or not (None: run
    #: until every task is done); the figures are measured inside the window anyway.
    stop_after: float | None = None
    #: Stop a run that has not finished by this simulated time.
    max_sim_s: float = 600.0

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.replicas < 1:
            raise ValueError(f"a simulated cluster needs nodes >= 1 and replicas >= 1, got "
                             f"nodes={self.nodes}, replicas={self.replicas}")


class SimCluster:
    """The cluster of ``config``, built and ready to :meth:`run` once."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        seed = config.seed
        self.loop = loop = EventLoop()
        self.net = net = Network(random.Random(f"net-{seed}"), delay_s=config.net_delay_s,
                                 jitter_s=config.net_jitter_s, local_s=config.local_delay_s)
        self.book = Book(loop.stop)
        publish_s = config.publish_s
        if publish_s is None:  # measured on the real Publisher, unless costs are fixed
            publish_s = adapter.publish_cost_s() if config.cost.timer is not None else 1e-6
        self.feed = RowFeed() if config.nodes_follow_rows else None
        followers = config.nodes if config.nodes_follow_rows else 0
        self.gcs = SimGcs(loop=loop, net=net, cost=config.cost, book=self.book,
                          processes=config.gcs_processes, storage_shards=config.settings.gcs_shards,
                          publish_s=publish_s, node_subscribers=followers, feed=self.feed)
        w = config.workload
        self.nodes = [SimNode(i, cpus=w.cpus, settings=config.settings, loop=loop, net=net, cost=config.cost,
                              book=self.book, fabric=self, rng=random.Random(f"node-{seed}-{i}"),
                              worker_start_s=config.worker_start_s, row_tick_s=config.row_tick_s,
                              follow_rows=config.nodes_follow_rows)
                      for i in range(config.nodes)]
        self._by_address = {n.address: n for n in self.nodes}
        self._by_id = {n.node_id: n for n in self.nodes}
        self.replica_list = [SimReplica(r, loop=loop, net=net, cost=config.cost, policy=config.policy,
                                        rng=random.Random(f"replica-{seed}-{r}"),
                                        task_time_s=config.settings.task_time_s, node_of=self.node_of)
                             for r in range(config.replicas)]
        self.gcs.replicas = self.replica_list
        self._boot()

    def _boot(self) -> None:
        for n in self.nodes:
            n.boot(prestart=n.cpus)
            self.gcs.register(n.node_id, n.address, adapter.load(n.state))
        rows = self.gcs.snapshot()
        for r in self.replica_list:
            r.snapshot(rows)
        peers = [adapter.row_load(adapter.Change("nodes", row.node_id, row.SerializeToString()))
                 for row in rows]
        known = [p for p in peers if p is not None]
        for n in self.nodes:
            n.know_peers(known)

    # ---- the fabric the nodes use ----------------------------------------------------

    def node_at(self, address: str) -> SimNode:
        return self._by_address[address]

    def node_of(self, node_id: bytes) -> SimNode:
        return self._by_id[node_id]

    def replicas(self) -> int:
        return len(self.replica_list)

    def schedule(self, replica: int, home: SimNode, action: Spill, at: float,
                 answer: Callable[[Any], None]) -> None:
        self.replica_list[replica].schedule(home, action, at, answer)

    def report_events(self, node: SimNode, events: list[Any], objects: list[Any], at: float,
                      done: Callable[[], None]) -> None:
        self.gcs.report_events(node.index, events, objects, at, done)

    def heartbeat(self, node: SimNode, load: Any, at: float) -> None:
        self.gcs.heartbeat(node.index, node.node_id, load, at)

    def peer_rows(self, since: int, now: float) -> tuple[list[Any], int]:
        assert self.feed is not None
        return self.feed.read(since, now)

    # ---- running -----------------------------------------------------------------------

    def run(self) -> SimResult:
        """Run the workload to the end (or ``max_sim_s``) and return its figures."""
        config, w = self.config, self.config.workload
        hot = w.hot_nodes(config.nodes)
        self.book.expected = w.total(config.nodes)
        for n in self.nodes:
            is_hot = n.index < hot
            n.start(w.count(is_hot), w.rate(is_hot), w.duration)
        window = w.window_s()
        for server in self.servers():
            server.window = (window / 4, window)
        until = config.max_sim_s
        if config.stop_after is not None:
            until = min(until, config.stop_after * w.window_s())
        t0 = time.perf_counter()
        # The collector of one real process walks its own heap; here it would walk every
        # simulated node's at once and charge the pause to whichever call it hit.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            self.loop.run(until=until)
        finally:
            gc.enable()
            gc.unfreeze()
        return self._result(self.book.complete(), time.perf_counter() - t0)

    def servers(self) -> list[Server]:
        """Every server: nodes, replicas, GCS processes."""
        return ([n.server for n in self.nodes] + [r.server for r in self.replica_list]
                + list(self.gcs.servers))

    def _result(self, complete: bool, wall_s: float) -> SimResult:
        config, book = self.config, self.book
        window = config.workload.window_s()
        lo, hi = window / 4, window
        records = book.tasks.values()
        done_in = sum(1 for r in records if lo <= r.done <= hi)
        spilled_in = sum(1 for r in records if lo <= r.spilled <= hi)
        spilled_done = sum(1 for r in records if r.spills and lo <= r.done <= hi)
        latencies = sorted(r.started - r.submitted if r.starts else math.inf
                           for r in records if lo <= r.submitted <= hi)
        kinds = {"node": [n.server for n in self.nodes], "replica": [r.server for r in self.replica_list],
                 "gcs": list(self.gcs.servers)}
        loads = {k: KindLoad.of(k, s) for k, s in kinds.items()}
        return SimResult(
            nodes=config.nodes, replicas=config.replicas, gcs_processes=config.gcs_processes,
            tasks=book.expected, done=book.done_count,
            spilled=sum(1 for r in records if r.spills),
            ran_elsewhere=sum(1 for r in records if r.starts and r.ran_on != r.home),
            window_s=hi - lo, throughput=done_in / (hi - lo),
            offered=config.workload.offered_rate(config.nodes),
            spill_rate=spilled_in / (hi - lo), spilled_throughput=spilled_done / (hi - lo),
            latency_p50_s=percentile(latencies, 50), latency_p99_s=percentile(latencies, 99),
            makespan_s=book.last_done - book.first_submit if complete else math.nan,
            elapsed_s=self.loop.now, gcs_lag_s=loads["gcs"].max_wait_s,
            events_applied=book.events_applied, heartbeats_per_node_s=1000.0 / config.settings.heartbeat_ms,
            loads=loads,
            complete=complete, wall_s=wall_s, events=self.loop.events)


def simulate(config: SimConfig) -> SimResult:
    """Build the cluster of ``config``, run its workload, return the figures."""
    return SimCluster(config).run()
