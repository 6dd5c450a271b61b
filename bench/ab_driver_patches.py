#!/usr/bin/env python3
"""A/B experiment: driver-side changes to the task path, tried as in-process patches.

Usage (from the repository root)::

    .venv/bin/python bench/ab_driver_patches.py --rounds 4 --items 5000

Each variant runs in its own fresh driver process (with its own cluster), and the
variants are interleaved ``--rounds`` times so load from other jobs on the machine
spreads over all of them. The figure that matters is CPU time per item (user+sys of the
driver, node, workers and GCS, from psutil, per task): on a shared 2-core box it is far
steadier than the rate, and CPU is what a 2-core machine runs out of. The table shows
medians per variant; rates are printed too but swing with other jobs' load. The patches touch only
the driver's process, in memory: nothing in ``runtime/`` is changed on disk. They are
sketches of proposed changes, not the changes themselves:

``no_owned_get``
    ``CoreClient._request`` skips object ids of tasks this client submitted: the node
    already pushes those results to their owner, so asking again makes the node send
    every result twice (see bench/probe_batches.py: 2 object ops per task).
``fast_args``
    ``codec.serialize`` takes the C pickler for the ``(args, kwargs, slots)`` tuple when
    its three containers hold only scalars (today the tuple of containers falls through
    to cloudpickle: ~7 us instead of ~1 us per submit).
``wait_index``
    ``CoreClient.wait_ids`` wakes the caller only when one of *its* ids arrived and
    counts arrivals instead of rescanning every id on each wake-up.
``all``
    the three together.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
VARIANTS = ["base", "no_owned_get", "fast_args", "wait_index", "all"]
ROWS = ["tasks_sync", "tasks_async", "wait_loop"]


def patch_no_owned_get(client_cls, _ids) -> None:
    orig_submit = client_cls.submit
    orig_request = client_cls._request

    def submit(self, op):
        owned = self.__dict__.setdefault("_owned_tasks", set())
        owned.add(op.submit.task_id)
        return orig_submit(self, op)

    def _request(self, ids):
        owned = self.__dict__.get("_owned_tasks", ())
        return orig_request(self, [i for i in ids if _ids.task_of(i) not in owned])

    def _apply(self, batch, _orig=client_cls._apply):
        _orig(self, batch)
        owned = self.__dict__.get("_owned_tasks")
        if owned:
            for op in batch.ops:
                if op.WhichOneof("op") == "object":
                    owned.discard(_ids.task_of(op.object.object_id))

    client_cls.submit = submit
    client_cls._request = _request
    client_cls._apply = _apply


def patch_fast_args(codec) -> None:
    import pickle
    orig = codec.serialize
    only = codec._only_scalars
    cont = codec._CONTAINERS
    head = codec._HEADER_NO_BUFFERS[0]
    plen = codec._PLEN.pack
    hs = codec._HEADER_SIZE
    S = codec.Serialized

    def serialize(value, *, error=False):
        if (not error and type(value) is tuple
                and all(type(x) in cont and only(x) for x in value)):
            p = pickle.dumps(value, protocol=5)
            return S(head + plen(len(p)), p, [], hs + len(p), [], False)
        return orig(value, error=error)

    codec.serialize = serialize


def patch_wait_index(client_cls) -> None:
    import threading
    import time as _t

    orig_apply = client_cls._apply

    def _apply(self, batch):
        # Same as the original, then wake only waiters whose ids arrived.
        waiters = self.__dict__.setdefault("_waiters", [])
        orig_apply(self, batch)
        if not waiters:
            return
        arrived = [op.object.object_id if op.WhichOneof("op") == "object"
                   else op.object_error.object_id for op in batch.ops
                   if op.WhichOneof("op") in ("object", "object_error")]
        with self._cv:
            for w in waiters:
                pending = w["pending"]
                for oid in arrived:
                    if oid in pending:
                        pending.discard(oid)
                        w["got"] += 1
                if w["got"] >= w["need"] and not w["woken"]:
                    w["woken"] = True
                    w["event"].set()

    orig_wait = client_cls.wait_ids

    def wait_ids(self, ids, num_ready, timeout):
        if self.kind != "driver":
            return orig_wait(self, ids, num_ready, timeout)
        self._check()
        objects = self._objects
        with self._lock:
            pending = {i for i in ids if i not in objects}
        need = num_ready - (len(ids) - len(pending))
        if need <= 0:
            return [i for i in ids if i in objects]
        w = {"pending": pending, "need": need, "got": 0, "woken": False,
             "event": threading.Event()}
        waiters = self.__dict__.setdefault("_waiters", [])
        with self._lock:
            waiters.append(w)
            # objects that arrived between the scan and the registration
            late = [i for i in pending if i in objects]
            for i in late:
                pending.discard(i)
                w["got"] += 1
        try:
            if w["got"] < need:
                self._request(list(pending))
                deadline = None if timeout is None else _t.monotonic() + timeout
                while not w["event"].wait(0.2 if deadline is None else
                                          max(0.0, min(0.2, deadline - _t.monotonic()))):
                    self._check()
                    if deadline is not None and _t.monotonic() >= deadline:
                        break
        finally:
            with self._lock:
                waiters.remove(w)
        return [i for i in ids if i in objects]

    client_cls._apply = _apply
    client_cls.wait_ids = wait_ids


def _cpu_by_kind() -> dict[str, float]:
    """CPU seconds (user+sys) so far of this driver and each kind of cluster process."""
    import psutil
    me = psutil.Process()
    out = {"driver": sum(me.cpu_times()[:2])}
    for p in me.children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            t = sum(p.cpu_times()[:2])
        except psutil.Error:
            continue
        kind = ("gcs" if "runtime.gcs" in cmd else "node" if "runtime.node" in cmd
                else "worker" if "runtime.worker" in cmd
                else "scheduler" if "runtime.scheduler" in cmd else "other")
        out[kind] = out.get(kind, 0.0) + t
    return out


def child(variant: str, items: int) -> None:
    sys.path.insert(0, PROJECT)
    from runtime import _ids
    from runtime.api._client import CoreClient
    from runtime.protocol import codec
    if variant in ("no_owned_get", "all"):
        patch_no_owned_get(CoreClient, _ids)
    if variant in ("fast_args", "all"):
        patch_fast_args(codec)
    if variant in ("wait_index", "all"):
        patch_wait_index(CoreClient)
    import runtime as rt
    rt.init(num_cpus=2)
    f = rt.remote(noop)
    get, wait = rt.get, rt.wait

    def tasks_sync(n):
        for _ in range(n):
            get(f.remote())

    def tasks_async(n):
        for _ in range(n // 1000):
            get([f.remote() for _ in range(1000)])

    def wait_loop(n):
        for _ in range(n // 1000):
            pending = [f.remote() for _ in range(1000)]
            while pending:
                _, pending = wait(pending, num_returns=1)

    fns = {"tasks_sync": tasks_sync, "tasks_async": tasks_async, "wait_loop": wait_loop}
    out = {}
    for row in ROWS:
        n = items if row != "tasks_sync" else items // 2
        fns[row](1000)                       # warm-up: workers up, function loaded
        time.sleep(0.3)                      # let the GCS event batches settle
        c0, t0 = _cpu_by_kind(), time.perf_counter()
        fns[row](n)
        el = time.perf_counter() - t0
        time.sleep(0.3)                      # include the node's last event flush
        c1 = _cpu_by_kind()
        cpu = {k: (c1.get(k, 0.0) - c0.get(k, 0.0)) / n * 1e6 for k in c1}
        out[row] = {"rate": n / el, "cpu_us": cpu, "cpu_total_us": sum(cpu.values())}
    rt.shutdown()
    print(json.dumps(out), flush=True)


def noop():
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--items", type=int, default=5000, help="tasks per row (sync: half)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return child(args._child, args.items)
    variants = args.variants.split(",")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PROJECT, HERE] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    res = {v: {r: [] for r in ROWS} for v in variants}
    for rnd in range(args.rounds):
        for v in variants:
            cp = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", v,
                                 "--items", str(args.items)],
                                env=env, capture_output=True, text=True, timeout=600)
            line = [x for x in cp.stdout.splitlines() if x.startswith("{")]
            if cp.returncode != 0 or not line:
                print(f"{v}: failed\n{cp.stderr[-2000:]}", file=sys.stderr)
                continue
            d = json.loads(line[-1])
            for r in ROWS:
                res[v][r].append(d[r])
            print(f"round {rnd + 1} {v}: " + ", ".join(
                f"{r}={d[r]['rate']:,.0f}/s {d[r]['cpu_total_us']:.0f}us" for r in ROWS),
                file=sys.stderr, flush=True)
    print(f"# driver-side A/B ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.1f}, {args.rounds} rounds x {args.items} items; medians)")
    print("CPU us per item, all processes (driver / node / workers / gcs), and ratio of the"
          " total to base; rate in items/s (noisy under load)")
    print("| variant | " + " | ".join(ROWS) + " |")
    print("|---|" + "---|" * len(ROWS))
    med = statistics.median

    def cpu(v, r, k=None):
        xs = res[v][r]
        return med([x["cpu_total_us"] if k is None else x["cpu_us"].get(k, 0.0) for x in xs])
    for v in variants:
        cells = []
        for r in ROWS:
            if not res[v][r]:
                cells.append("-")
                continue
            tot = cpu(v, r)
            parts = "/".join(f"{cpu(v, r, k):.0f}" for k in ("driver", "node", "worker", "gcs"))
            ratio = f" ({tot / cpu('base', r):.2f})" if v != "base" and res["base"][r] else ""
            rate = med([x["rate"] for x in res[v][r]])
            cells.append(f"{tot:.0f}{ratio} = {parts}; {rate:,.0f}/s")
        print(f"| {v} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
