#!/usr/bin/env python3
"""What mutual TLS costs: the same rows on a plaintext cluster and on a ``tls=True`` one.

Usage (from the repository root)::

    .venv/bin/python bench/tls_overhead.py              # 3 repeats, median shown
    .venv/bin/python bench/tls_overhead.py --repeats 5 --tasks 2000

Each mode starts its own two-node ``LocalCluster`` on this machine (the second node
offers the custom resource ``far``), attaches a driver (with the join bundle for TLS),
and measures:

* tasks/s: ``--tasks`` trivial tasks submitted at once, then ``get`` of all;
* actor calls/s: ``--calls`` calls of one actor's method submitted at once, then ``get``;
* a 100 MB transfer: a task on the ``far`` node makes a 100 MB array, the driver ``get``s
  it (pulled from that node to the driver's over gRPC), in MB/s.

A figure printer, not a test: nothing is asserted. Machines here are shared and noisy;
compare the two columns of one run only.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
if PROJECT not in sys.path:
    sys.path.insert(0, PROJECT)

import numpy as np  # noqa: E402

import runtime as rt  # noqa: E402
from runtime.cluster.local import LocalCluster, NodeSpec  # noqa: E402

MB = 1024 * 1024


def _median(repeats: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeats))


def measure(tls: bool, args: argparse.Namespace) -> dict[str, float]:
    """The rows of one mode, each the median of ``args.repeats`` runs."""
    root = tempfile.mkdtemp(prefix="cellray-tls-bench-")
    cluster = LocalCluster([NodeSpec(num_cpus=2), NodeSpec(num_cpus=2, resources={"far": 1})],
                           global_schedulers=1, tls=tls, session_root=pathlib.Path(root))
    cluster.start()
    try:
        if tls:
            rt.init(address=cluster.address, bundle=str(cluster.bundle))
        else:
            rt.init(address=cluster.address, token_file=str(cluster.token_file))
        noop = rt.remote(lambda: None)

        @rt.remote
        class Counter:
            def __init__(self) -> None:
                self.n = 0

            def add(self) -> int:
                self.n += 1
                return self.n

        @rt.remote(resources={"far": 1})
        def make(n: int) -> np.ndarray:
            return np.ones(n, dtype=np.uint8)

        counter = Counter.remote()
        rt.get([noop.remote() for _ in range(200)] + [counter.add.remote() for _ in range(200)])

        def tasks() -> float:
            t = time.perf_counter()
            rt.get([noop.remote() for _ in range(args.tasks)])
            return args.tasks / (time.perf_counter() - t)

        def calls() -> float:
            t = time.perf_counter()
            rt.get([counter.add.remote() for _ in range(args.calls)])
            return args.calls / (time.perf_counter() - t)

        def transfer() -> float:
            ref = make.remote(100 * MB)
            rt.wait([ref], fetch_local=False)  # made on the far node; only the pull is timed
            t = time.perf_counter()
            value = rt.get(ref)
            took = time.perf_counter() - t
            assert value.nbytes == 100 * MB
            return 100 / took

        return {"tasks/s": _median(args.repeats, tasks), "actor calls/s": _median(args.repeats, calls),
                "100 MB transfer, MB/s": _median(args.repeats, transfer)}
    finally:
        rt.shutdown()
        cluster.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--calls", type=int, default=1000)
    args = p.parse_args()
    plain = measure(False, args)
    tls = measure(True, args)
    print(f"{'row':<24}{'plaintext':>12}{'mutual TLS':>12}{'TLS/plain':>11}")
    for row in plain:
        print(f"{row:<24}{plain[row]:>12.0f}{tls[row]:>12.0f}{tls[row] / plain[row]:>10.2f}x")
    print(f"(median of {args.repeats}; {os.cpu_count()} CPUs; two nodes on this machine)")


if __name__ == "__main__":
    main()
