#!/usr/bin/env python3
"""cellray micro-benchmarks: one table of the rows DESIGN.md lists (Performance).

Usage (from the repository root)::

    .venv/bin/python bench/microbench.py                 # 2 s loops, median of 3 repeats
    .venv/bin/python bench/microbench.py --quick         # 0.5 s loops
    .venv/bin/python bench/microbench.py --json /tmp/mb.json --only tasks_sync,tasks_async
    .venv/bin/python bench/microbench.py --soak tasks_async --seconds 30   # for py-spy

Every throughput row is a fixed-duration loop (``--duration``, default 2 s; 0.5 s with
``--quick``) repeated ``--repeats`` times (default 3); the table shows the median and the
min..max of the repeats. A batched row always finishes the batch it started, so a loop
can overrun its duration by up to one batch; the rate is items / measured time.

Startup (``init`` + first task) and idle memory are measured in a fresh subprocess per
repeat: ``import runtime`` is not counted in startup (it is shown separately), idle
memory is read 2 s after the first task, summed over the cluster processes (GCS, node
manager, workers: every descendant of that driver) with psutil; RSS double-counts shared
pages, PSS does not. The driver's own RSS/PSS is shown on its own row.

This is a script, not a test: it asserts nothing about time. Machines here are shared
and noisy; compare against Ray only within one run (see bench/README.md).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
if PROJECT not in sys.path:
    sys.path.insert(0, PROJECT)

perf = time.perf_counter

LARGE_BYTES = 100 * 1000 * 1000   # 100 MB float64 array (as in ../shared/bench)

# (key, label, unit); unit "1/s" and "GB/s": higher is better; "s", "MB", "n": lower.
ROWS = [
    ("tasks_sync", "tasks sync (get each)", "1/s"),
    ("tasks_async", "tasks async (submit N, get all)", "1/s"),
    ("actor_sync", "actor calls sync", "1/s"),
    ("actor_async", "actor calls async", "1/s"),
    ("put_small", "put calls (small)", "1/s"),
    ("get_small", "get calls (small)", "1/s"),
    ("put_large", "put 100 MB array", "GB/s"),
    ("get_large", "get 100 MB array", "GB/s"),
    ("fanout_nested", "nested fan-out (1 parent + 10 children)", "1/s"),
    ("wait_loop", "wait(num_returns=1) loop", "1/s"),
    ("import_s", "import runtime (fresh process)", "s"),
    ("startup_s", "startup: init + first task", "s"),
    ("idle_rss_mb", "idle cluster RSS (gcs+node+workers)", "MB"),
    ("idle_pss_mb", "idle cluster PSS (gcs+node+workers)", "MB"),
    ("driver_rss_mb", "driver RSS after first task", "MB"),
    ("driver_pss_mb", "driver PSS after first task", "MB"),
    ("idle_procs", "cluster processes (excl. driver)", "n"),
    ("shutdown_s", "shutdown", "s"),
    ("tasks_3nodes", "tasks async across 3 local nodes", "1/s"),
    ("get_cross_node", "cross-node get of a 100 MB array", "GB/s"),
]
ROW_KEYS = [r[0] for r in ROWS]
CHILD_KEYS = ("import_s", "startup_s", "idle_rss_mb", "idle_pss_mb", "driver_rss_mb",
              "driver_pss_mb", "idle_procs", "shutdown_s")


# --------------------------------------------------------------------------------------
# functions shipped to workers (module level in __main__: pickled by value)
# --------------------------------------------------------------------------------------

def noop():
    return None


def child(i):
    return i


class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


class NotAvailable(Exception):
    """The row cannot run on this version of cellray; the message says why."""


# --------------------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------------------

def timed_loop(step, duration, items_per_step=1, warmup=True):
    """Call ``step`` until ``duration`` seconds passed (checked after each call)."""
    if warmup:
        step()
    n = 0
    t0 = perf()
    while True:
        step()
        n += 1
        el = perf() - t0
        if el >= duration:
            return n * items_per_step / el


def cluster_memory(driver_pid=None):
    """(rss_mb, pss_mb, nprocs, driver_rss_mb, driver_pss_mb) for the driver's descendants."""
    import psutil
    me = psutil.Process(driver_pid or os.getpid())
    rss = pss = 0
    n = 0
    for p in me.children(recursive=True):
        try:
            full = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        rss += full.rss
        pss += getattr(full, "pss", 0)
        n += 1
    mine = me.memory_full_info()
    return rss / 1e6, pss / 1e6, n, mine.rss / 1e6, getattr(mine, "pss", 0) / 1e6


# --------------------------------------------------------------------------------------
# the workloads
# --------------------------------------------------------------------------------------

class Bench:
    def __init__(self, rt, args):
        self.rt = rt
        self.args = args
        self.noop = rt.remote(noop)
        self.child = rt.remote(child)
        child_r = self.child
        get = rt.get

        def fanout_parent(n):
            return sum(get([child_r.remote(i) for i in range(n)]))

        self.parent = rt.remote(fanout_parent)
        self.actor_error = None
        try:
            self.Counter = rt.remote(Counter)
        except TypeError as e:  # actors not built yet: @remote on a class raises TypeError
            self.Counter = None
            self.actor_error = str(e)
        self._actor = None
        self.extra = {}

    # --- tasks
    def tasks_sync(self, d):
        f, get = self.noop, self.rt.get
        return timed_loop(lambda: get(f.remote()), d)

    def tasks_async(self, d):
        f, get, n = self.noop, self.rt.get, self.args.batch

        def step():
            get([f.remote() for _ in range(n)])
        return timed_loop(step, d, n)

    # --- actors
    def actor(self):
        if self.Counter is None:
            raise NotAvailable("n/a (actors not available)")
        if self._actor is None:
            self._actor = self.Counter.remote()
            self.rt.get(self._actor.incr.remote())
        return self._actor

    def actor_sync(self, d):
        a, get = self.actor(), self.rt.get
        return timed_loop(lambda: get(a.incr.remote()), d)

    def actor_async(self, d):
        a, get, n = self.actor(), self.rt.get, self.args.batch

        def step():
            get([a.incr.remote() for _ in range(n)])
        return timed_loop(step, d, n)

    # --- object store, small
    def put_small(self, d):
        put = self.rt.put
        keep = []
        add = keep.append
        r = timed_loop(lambda: add(put(1)), d)
        del keep
        return r

    def get_small(self, d):
        refs = [self.rt.put(1) for _ in range(1000)]
        get = self.rt.get
        i = [0]

        def step():
            get(refs[i[0] % 1000])
            i[0] += 1
        r = timed_loop(step, d)
        del refs
        return r

    # --- object store, large
    def _array(self):
        import numpy as np
        return np.ones(LARGE_BYTES // 8, dtype=np.float64)

    def put_large(self, d):
        arr = self._array()
        put = self.rt.put
        holder = [None]

        def step():
            holder[0] = None          # free the previous object first
            holder[0] = put(arr)
        r = timed_loop(step, d, arr.nbytes / 1e9)
        holder[0] = None
        return r

    def get_large(self, d):
        ref = self.rt.put(self._array())
        get = self.rt.get
        a1, a2 = get(ref), get(ref)
        try:
            zero_copy = a1.ctypes.data == a2.ctypes.data
        except Exception:
            zero_copy = None
        self.extra["get_large"] = {"zero_copy_same_buffer": zero_copy,
                                   "writeable": bool(a1.flags.writeable),
                                   "correct": bool(a1.nbytes == LARGE_BYTES and a1[-1] == 1.0)}
        del a1, a2

        def step():
            x = get(ref)
            del x
        r = timed_loop(step, d, LARGE_BYTES / 1e9)
        del ref
        return r

    # --- nested tasks
    def fanout_nested(self, d):
        p, get, k = self.parent, self.rt.get, self.args.fan_parents

        def step():
            out = get([p.remote(10) for _ in range(k)])
            assert out[0] == 45, out[0]
        return timed_loop(step, d, k * 11)

    # --- wait
    def wait_loop(self, d):
        f, wait, n = self.noop, self.rt.wait, self.args.wait_n
        done = 0
        t0 = perf()
        while True:   # whole rounds: submit n, wait(num_returns=1) until all are done
            pending = [f.remote() for _ in range(n)]
            while pending:
                ready, pending = wait(pending, num_returns=1)
                done += len(ready)
            el = perf() - t0
            if el >= d:
                return done / el


# --------------------------------------------------------------------------------------
# fresh-process measurements: import, startup, idle memory, shutdown
# --------------------------------------------------------------------------------------

def startup_child(num_cpus):
    """Runs in a fresh interpreter; prints one JSON line."""
    t0 = perf()
    import runtime as rt
    t1 = perf()
    rt.init(num_cpus=num_cpus)
    f = rt.remote(noop)
    rt.get(f.remote())
    t2 = perf()
    time.sleep(2.0)
    rss, pss, n, drss, dpss = cluster_memory()
    t3 = perf()
    rt.shutdown()
    t4 = perf()
    print(json.dumps({"import_s": t1 - t0, "startup_s": t2 - t1, "idle_rss_mb": rss,
                      "idle_pss_mb": pss, "idle_procs": n, "driver_rss_mb": drss,
                      "driver_pss_mb": dpss, "shutdown_s": t4 - t3}), flush=True)


def run_startup(args):
    samples = {k: [] for k in CHILD_KEYS}
    errors = []
    env = dict(os.environ)
    env["PYTHONPATH"] = PROJECT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for _ in range(args.repeats):
        cp = subprocess.run([sys.executable, os.path.abspath(__file__), "--_startup-child",
                             "--num-cpus", str(args.num_cpus)],
                            capture_output=True, text=True, env=env, timeout=300)
        line = [x for x in cp.stdout.splitlines() if x.startswith("{")]
        if cp.returncode != 0 or not line:
            errors.append(f"rc={cp.returncode}: {cp.stderr.strip()[-500:]}")
            continue
        d = json.loads(line[-1])
        for k in CHILD_KEYS:
            samples[k].append(d[k])
    return samples, errors


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------

def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "1/s":
        return f"{v:,.0f}"
    if unit == "GB/s":
        return f"{v:.2f}"
    if unit == "MB":
        return f"{v:,.0f}"
    if unit == "n":
        return f"{v:.0f}"
    return f"{v:.3f}"


def print_table(results, args):
    head = ["row", "unit", "median", "min..max", "n"]
    lines = [head]
    for key, label, unit in ROWS:
        r = results.get(key)
        if r is None:
            continue
        if "error" in r:
            lines.append([label, unit, r["error"], "", ""])
            continue
        s = r["samples"]
        lines.append([label, unit, fmt(r["median"], unit),
                      f"{fmt(min(s), unit)}..{fmt(max(s), unit)}", str(len(s))])
    w = [max(len(x[i]) for x in lines) for i in range(len(head))]
    print(f"# cellray microbench ({time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
          f"{os.cpu_count()} cpus, python {platform.python_version()}, "
          f"{args.duration:g} s loops x {args.repeats}, num_cpus={args.num_cpus})")
    print()
    for j, x in enumerate(lines):
        print("| " + " | ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i])
                                for i, c in enumerate(x)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (n + 2) for n in w) + "|")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="0.5 s loops")
    ap.add_argument("--duration", type=float, default=None, help="seconds per loop (default 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-cpus", type=float, default=2)
    ap.add_argument("--batch", type=int, default=1000, help="tasks per batch in async rows")
    ap.add_argument("--wait-n", type=int, default=1000, help="refs per wait-loop round")
    ap.add_argument("--fan-parents", type=int, default=10, help="parents per fan-out round")
    ap.add_argument("--only", default=None, help="comma list of row keys: " + ",".join(ROW_KEYS))
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--soak", default=None, metavar="ROW",
                    help="run one throughput row without stopping (for profilers); prints pids")
    ap.add_argument("--seconds", type=float, default=30.0, help="--soak: how long")
    ap.add_argument("--_startup-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.duration is None:
        args.duration = 0.5 if args.quick else 2.0
    if args._startup_child:
        startup_child(args.num_cpus)
        return

    only = set(args.only.split(",")) if args.only else None
    if only and only - set(ROW_KEYS):
        ap.error(f"unknown rows {sorted(only - set(ROW_KEYS))}; known: {', '.join(ROW_KEYS)}")
    results = {}
    labels = {k: u for k, _, u in ROWS}

    def record(key, samples):
        results[key] = {"median": statistics.median(samples), "samples": samples,
                        "unit": labels[key]}

    # Fresh-process rows first, while the machine is quiet.
    if args.soak is None and (only is None or only & set(CHILD_KEYS)):
        samples, errors = run_startup(args)
        for k in CHILD_KEYS:
            if only and k not in only:
                continue
            if samples[k]:
                record(k, samples[k])
            else:
                results[k] = {"error": "ERR", "unit": labels[k]}
        if errors:
            results.setdefault("_errors", {})["startup"] = errors
            print("startup child failed:", *errors, sep="\n  ", file=sys.stderr)

    throughput = [k for k in ROW_KEYS[:10] if only is None or k in only]
    if args.soak is not None:
        throughput = [args.soak]
    if throughput:
        import runtime as rt
        rt.init(num_cpus=args.num_cpus)
        b = Bench(rt, args)
        try:
            if args.soak is not None:
                return soak(rt, b, args)
            for key in throughput:
                gc.collect()
                samples = []
                try:
                    for _ in range(args.repeats):
                        samples.append(getattr(b, key)(args.duration))
                        gc.collect()
                    record(key, samples)
                except NotAvailable as e:
                    results[key] = {"error": str(e), "unit": labels[key]}
                except Exception as e:  # record and go on with the other rows
                    results[key] = {"error": f"ERR {type(e).__name__}: {str(e)[:120]}",
                                    "unit": labels[key]}
                print(f"  {key}: {results[key].get('median', results[key].get('error'))}",
                      file=sys.stderr, flush=True)
            if b.actor_error:
                results.setdefault("_notes", {})["actors"] = b.actor_error
            results.setdefault("_notes", {}).update(b.extra)
        finally:
            rt.shutdown()

    if args.soak is None and (only is None or only & set(MULTINODE_KEYS)):
        try:
            run_multinode(args, record)
        except Exception as e:
            for k in MULTINODE_KEYS:
                results.setdefault(k, {"error": f"ERR {type(e).__name__}: {str(e)[:120]}",
                                       "unit": labels[k]})

    print_table(results, args)
    notes = results.get("_notes", {})
    if "get_large" in notes:
        print(f"\nget 100 MB: {notes['get_large']}")
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
                "cpus": os.cpu_count(), "python": platform.python_version(),
                "duration_s": args.duration, "repeats": args.repeats,
                "num_cpus": args.num_cpus, "batch": args.batch, "wait_n": args.wait_n}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1, default=str)


MULTINODE_KEYS = ["tasks_3nodes", "get_cross_node"]


def make_far_array():
    import numpy as np
    return np.ones(LARGE_BYTES // 8, dtype=np.float64)


def make_far_small():
    return 1


def run_multinode(args, record):
    """Rows on a 3-node local cluster: spread tasks, and arrays pulled from another node."""
    import runtime as rt
    from runtime.cluster.local import LocalCluster, NodeSpec

    cpus = args.num_cpus
    cluster = LocalCluster([NodeSpec(num_cpus=cpus), NodeSpec(num_cpus=cpus),
                            NodeSpec(num_cpus=cpus, resources={"far": 1})]).start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        f, get, n = rt.remote(noop), rt.get, args.batch
        get([f.remote() for _ in range(n)])

        def step():
            get([f.remote() for _ in range(n)])
        record("tasks_3nodes", [timed_loop(step, args.duration, n) for _ in range(args.repeats)])

        big = rt.remote(resources={"far": 1})(make_far_array)
        small = rt.remote(resources={"far": 1})(make_far_small)

        def cross_node(_d):
            # A 100 MB result made on the third node, fetched here; minus the same round
            # trip with a small result, so only the transfer is left.
            get(small.remote())
            t0 = perf()
            for _ in range(3):
                get(small.remote())
            t_small = (perf() - t0) / 3
            t0 = perf()
            for _ in range(3):
                x = get(big.remote())
                del x
            t_big = (perf() - t0) / 3
            return (LARGE_BYTES / 1e9) / max(t_big - t_small, 1e-6)
        record("get_cross_node", [cross_node(args.duration) for _ in range(args.repeats)])
    finally:
        rt.shutdown()
        cluster.stop()


def soak(rt, b, args):
    """Run one row in a loop for ``--seconds``; print the pids a profiler can attach to."""
    import psutil
    me = psutil.Process()
    kids = me.children(recursive=True)
    print(json.dumps({"driver": os.getpid(),
                      "processes": {p.pid: " ".join(p.cmdline()[1:4]) for p in kids}}),
          flush=True)
    fn = getattr(b, args.soak)
    end = perf() + args.seconds
    n = 0
    try:
        while perf() < end:
            r = fn(min(1.0, max(end - perf(), 0.05)))
            n += 1
            print(f"soak {args.soak}: {r:,.1f}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:   # how profile_task_path.py stops it; main() shuts down
        pass


if __name__ == "__main__":
    main()
