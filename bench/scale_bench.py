#!/usr/bin/env python3
"""Scheduling rows on local clusters of several node processes (issue 11, point 7).

Usage (from the repository root)::

    .venv/bin/python bench/scale_bench.py                # 1, 2, 4, 8 nodes; actors; groups
    .venv/bin/python bench/scale_bench.py --quick        # smaller batches, one repeat
    .venv/bin/python bench/scale_bench.py --nodes 1,2 --json /tmp/scale.json

Rows:

- ``tasks/s on N nodes``: the paper's workload on N local nodes of 1 CPU each: one
  driver-like parent task pinned to each node (``NodeAffinitySchedulingStrategy``) submits
  ``--tasks`` no-op tasks and waits for them, all parents at once; tasks/s over all
  nodes, and the ratio to 1 node. Every node schedules its own tasks bottom-up and spills
  only what its peers can take sooner.
- ``actors created/s``: ``--actors`` zero-CPU actors created at once (SPREAD over 3
  nodes), each answering one call; then killed.
- ``placement groups created/s``: ``--groups`` groups of two 0.1-CPU bundles
  (``SPREAD``) created at once and waited for (two-phase reservation on the nodes);
  then removed.

All the node processes share this machine's cores (``os.cpu_count()`` is printed): past
that many nodes the rows show the machine's limit, not cellray's. ``bench/simulate.py``
runs the same scheduling code for up to 1,000 simulated nodes. This is a script, not a
test: it prints figures and asserts nothing about time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
if PROJECT not in sys.path:
    sys.path.insert(0, PROJECT)

perf = time.perf_counter


def noop() -> None:
    return None


def parent(n: int) -> int:
    import runtime as rt
    f = rt.remote(num_cpus=1)(noop)
    rt.get([f.remote() for _ in range(n)])
    return n


def tasks_on_nodes(nodes: int, tasks: int, repeats: int) -> list[float]:
    """Tasks/s with one submitting parent per node, ``nodes`` nodes of 1 CPU."""
    import runtime as rt
    from runtime.cluster.local import LocalCluster, NodeSpec
    from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = LocalCluster([NodeSpec(num_cpus=1) for _ in range(nodes)]).start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        ids = [info["node_id"] for info in cluster.node_info]
        # Parents hold no CPU: they only submit and wait (their children lend nothing).
        parents = [rt.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(i, soft=False))(parent)
                   for i in ids]
        rt.get([p.remote(50) for p in parents])  # warm up every node's workers
        rates = []
        for _ in range(repeats):
            t0 = perf()
            done = sum(rt.get([p.remote(tasks) for p in parents]))
            rates.append(done / (perf() - t0))
        return rates
    finally:
        rt.shutdown()
        cluster.stop()


class Probe:
    def ping(self) -> int:
        return 1


def actors_and_groups(actors: int, groups: int, repeats: int) -> tuple[list[float], list[float]]:
    import runtime as rt
    from runtime.cluster.local import LocalCluster, NodeSpec
    from runtime.util import placement_group, remove_placement_group

    cluster = LocalCluster([NodeSpec(num_cpus=2) for _ in range(3)]).start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        cls = rt.remote(num_cpus=0, scheduling_strategy="SPREAD")(Probe)
        actor_rates = []
        for _ in range(repeats):
            t0 = perf()
            handles = [cls.remote() for _ in range(actors)]
            rt.get([h.ping.remote() for h in handles])
            actor_rates.append(actors / (perf() - t0))
            for h in handles:
                rt.kill(h)
        group_rates = []
        for _ in range(repeats):
            t0 = perf()
            pgs = [placement_group([{"CPU": 0.1}, {"CPU": 0.1}], strategy="SPREAD") for _ in range(groups)]
            for pg in pgs:
                if not pg.wait(60):
                    raise RuntimeError("a placement group was not created within 60 s")
            group_rates.append(groups / (perf() - t0))
            for pg in pgs:
                remove_placement_group(pg)
        return actor_rates, group_rates
    finally:
        rt.shutdown()
        cluster.stop()


def _fmt(rates: list[float]) -> str:
    med = statistics.median(rates)
    return f"{med:10.1f}   ({min(rates):.1f}..{max(rates):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="1,2,4,8", help="node counts for the tasks rows")
    ap.add_argument("--tasks", type=int, default=2000, help="tasks each node's parent submits")
    ap.add_argument("--actors", type=int, default=60)
    ap.add_argument("--groups", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller batches, one repeat")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.actors, args.groups, args.repeats = 300, 20, 10, 1
    counts = [int(n) for n in args.nodes.split(",") if n]
    print(f"cellray scale rows: {os.cpu_count()} CPU core(s) on this machine, {args.repeats} repeat(s)")
    results: dict[str, list[float]] = {}
    for n in counts:
        results[f"tasks_{n}_nodes"] = tasks_on_nodes(n, args.tasks, args.repeats)
    results["actors_created"], results["groups_created"] = actors_and_groups(args.actors, args.groups,
                                                                             args.repeats)
    base = statistics.median(results[f"tasks_{counts[0]}_nodes"])
    print(f"{'row':40} {'median':>10}   (min..max)   ratio to {counts[0]} node(s)")
    for n in counts:
        rates = results[f"tasks_{n}_nodes"]
        print(f"{f'tasks/s on {n} node(s)':40} {_fmt(rates)}   {statistics.median(rates) / base:.2f}x")
    print(f"{'actors created/s (3 nodes)':40} {_fmt(results['actors_created'])}")
    print(f"{'placement groups created/s (3 nodes)':40} {_fmt(results['groups_created'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu_count": os.cpu_count(), "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
