#!/usr/bin/env python3
"""The node manager's memory across many actor calls and tasks (issue 12, point 7).

    .venv/bin/python bench/node_memory.py                 # 100,000 actor calls, 100,000 tasks
    .venv/bin/python bench/node_memory.py --calls 20000 --tasks 20000

Prints the node manager's RSS after a warm-up and after each 10% of the work; a flat line
means nothing is kept per call or per task. A script, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()

    import psutil

    import runtime as rt

    info = rt.init(num_cpus=2)
    node = next(p for p in psutil.Process().children(recursive=True)
                if "runtime.node" in " ".join(p.cmdline()))

    def rss_mb() -> float:
        return node.memory_info().rss / 1e6

    @rt.remote
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def incr(self) -> int:
            self.n += 1
            return self.n

    @rt.remote
    def noop() -> None:
        return None

    try:
        c = Counter.remote()
        rt.get([c.incr.remote() for _ in range(args.batch)])
        rt.get([noop.remote() for _ in range(args.batch)])
        print(f"cluster at {info.address}; node manager pid {node.pid}")
        for label, n, make in (("actor calls", args.calls, lambda: c.incr.remote()),
                               ("tasks", args.tasks, lambda: noop.remote())):
            start = rss_mb()
            print(f"{label}: node manager RSS {start:.1f} MB after warm-up")
            step = max(args.batch, n // 10)
            done = 0
            while done < n:
                for _ in range(0, step, args.batch):
                    rt.get([make() for _ in range(args.batch)])
                done += step
                print(f"  after {done:>7,} {label}: {rss_mb():.1f} MB ({rss_mb() - start:+.1f})")
    finally:
        rt.shutdown()


if __name__ == "__main__":
    main()
