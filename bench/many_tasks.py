#!/usr/bin/env python3
"""Many no-op tasks submitted at once over several local nodes: every one must finish,
each exactly once (issue 11, point 1). Prints the time each run took.

    .venv/bin/python bench/many_tasks.py                      # 10,000 and 100,000 on 2, 4, 8 nodes
    .venv/bin/python bench/many_tasks.py --tasks 10000 --nodes 4

Each task appends its index to a file (one short O_APPEND write, so lines never
interleave); the run checks that every index is there exactly once. A script, not a
test: tests/cluster/test_many_tasks.py runs the 10,000-task case in the suite.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def run(n: int, nodes: int) -> str:
    import runtime as rt

    ran = os.path.join(tempfile.mkdtemp(prefix="cellray-many-"), "ran")

    def mark(i: int) -> int:
        with open(ran, "a") as f:
            f.write(f"{i}\n")
        return i

    rt.init(num_nodes=nodes, num_cpus=1)
    try:
        f = rt.remote(mark)
        t0 = time.perf_counter()
        refs = [f.remote(i) for i in range(n)]
        _, pending = rt.wait(refs, num_returns=n, timeout=1800)
        took = time.perf_counter() - t0
        if pending:
            return f"STUCK: {len(pending)} of {n} not finished after {took:.0f} s"
        assert rt.get(refs, timeout=600) == list(range(n))
        with open(ran) as fh:
            runs = Counter(int(line) for line in fh.read().split())
        missing = n - len(runs)
        twice = sum(1 for c in runs.values() if c > 1)
        spilled = sum(node.tasks_spilled for node in rt.state.list_nodes())
        verdict = "ok" if not missing and not twice else f"BAD: {missing} never ran, {twice} ran twice"
        return f"{verdict}: {took:.1f} s ({n / took:,.0f} tasks/s), {spilled:,} spilled"
    finally:
        rt.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="10000,100000")
    ap.add_argument("--nodes", default="2,4,8")
    args = ap.parse_args()
    for n in (int(x) for x in args.tasks.split(",")):
        for k in (int(x) for x in args.nodes.split(",")):
            print(f"{n:>7,} tasks on {k} node(s): {run(n, k)}", flush=True)


if __name__ == "__main__":
    main()
