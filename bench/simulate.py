#!/usr/bin/env python3
"""Scale simulation: the real scheduling code at 10 to 1,000 nodes, 1 to 8 scheduler replicas.

Usage (from the repository root)::

    .venv/bin/python bench/simulate.py                  # the full grid (several minutes)
    .venv/bin/python bench/simulate.py --quick          # 10 and 100 nodes, 1/2/4 replicas (< 1 min)
    .venv/bin/python bench/simulate.py --nodes 100 --replicas 1,2 --tasks-per-node 200 --seed 3

Every node is the real ``LocalScheduler``, every replica the real ``ClusterView`` and
``PlacementAttempts``, the GCS the real ``GcsState``, driven in one process by a
discrete-event loop (``runtime/sim``). Each call is charged the CPU time it really took
here, so the limits printed are those of the real code. Every node's driver offers half
the node's capacity in 10 ms tasks; the first 10% of the nodes offer twice their capacity
and spill. See bench/README.md (Scale simulation) for the model and its limits.

The simulation's wall time is the real code's CPU time: a 1,000-node run executes every
node's decisions one after another on this machine (about a minute per run here).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
if PROJECT not in sys.path:
    sys.path.insert(0, PROJECT)

from runtime.sim import FixedCost, MeasuredCost, SimConfig, Workload, simulate  # noqa: E402
from runtime.sim.report import HEADER, conclude, row  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=_ints, default=None, help="node counts (default 10,100,1000)")
    p.add_argument("--replicas", type=_ints, default=None, help="replica counts (default 1,2,4,8)")
    p.add_argument("--tasks-per-node", type=int, default=None,
                   help="tasks a normal node's driver submits (default 100: a 0.5 s window)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="10 and 100 nodes, 1, 2 and 4 replicas, 60 tasks per node")
    p.add_argument("--cpus", type=int, default=4, help="CPUs per node (default 4)")
    p.add_argument("--task-ms", type=float, default=10.0, help="mean task duration (default 10 ms)")
    p.add_argument("--load", type=float, default=0.5, help="normal nodes' offered load (default 0.5)")
    p.add_argument("--hot-share", type=float, default=0.1, help="share of hot nodes (default 0.1)")
    p.add_argument("--hot-load", type=float, default=2.0, help="hot nodes' offered load (default 2.0)")
    p.add_argument("--gcs-processes", type=int, default=1,
                   help="GCS processes, one shard each (default 1, as cellray runs it)")
    p.add_argument("--net-delay-us", type=float, default=100.0, help="one-way delay (default 100 µs)")
    p.add_argument("--policy", default="locality", help="replicas' placement policy (default locality)")
    p.add_argument("--cost-scale", type=float, default=1.0,
                   help="multiply measured costs (0.5: a machine twice as fast)")
    p.add_argument("--fixed-cost-us", type=float, default=None,
                   help="charge this constant per call instead of measuring (repeatable runs)")
    p.add_argument("--stop-after", type=float, default=2.0,
                   help="end each run this many submission windows in, done or not (default 2)")
    p.add_argument("--json", default=None, help="also write every run's figures to this file")
    args = p.parse_args(argv)

    nodes = args.nodes or ([10, 100] if args.quick else [10, 100, 1000])
    replicas = args.replicas or ([1, 2, 4] if args.quick else [1, 2, 4, 8])
    tasks = args.tasks_per_node or (60 if args.quick else 100)
    workload = Workload(tasks_per_node=tasks, cpus=args.cpus, task_s=args.task_ms / 1000, load=args.load,
                        hot_share=args.hot_share, hot_load=args.hot_load)
    cost = (FixedCost(default_s=args.fixed_cost_us / 1e6) if args.fixed_cost_us is not None
            else MeasuredCost(scale=args.cost_scale))
    print(f"workload: {tasks} tasks per normal node over {workload.window_s():.2f} s "
          f"({workload.rate(False):.0f}/s per node, {workload.rate(True):.0f}/s on the "
          f"{args.hot_share:.0%} hot nodes), {args.task_ms:g} ms tasks, {args.cpus} CPUs per node; "
          f"network {args.net_delay_us:g} µs; GCS processes {args.gcs_processes}; "
          f"costs {'fixed' if args.fixed_cost_us is not None else 'measured'}; seed {args.seed}")
    print("tasks/s, spilled: tasks (all, spilled ones) done per second in the steady window; "
          "p50/p99: submit -> start;\nnode/repl/gcs: busiest server's busy share of the window; "
          "gcs_lag: longest a GCS call waited; place_us: one placement")
    print(HEADER, flush=True)
    results = []
    t0 = time.perf_counter()
    for n in nodes:
        for r in replicas:
            res = simulate(SimConfig(nodes=n, replicas=r, workload=workload, seed=args.seed,
                                     gcs_processes=args.gcs_processes, cost=cost,
                                     net_delay_s=args.net_delay_us / 1e6,
                                     net_jitter_s=args.net_delay_us / 5e6, policy=args.policy,
                                     stop_after=args.stop_after))
            results.append(res)
            print(row(res), f"  ({res.wall_s:.0f} s)", flush=True)
    print(f"\n{len(results)} runs in {time.perf_counter() - t0:.0f} s\n")
    print(conclude(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
