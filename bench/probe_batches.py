#!/usr/bin/env python3
"""How many ops ride in each Session stream message, per direction, during a workload.

Usage (from the repository root)::

    .venv/bin/python bench/probe_batches.py                    # tasks_async, 5 s
    .venv/bin/python bench/probe_batches.py --row actor_async --seconds 5

Every stream message costs a fixed amount (a grpc write: one ``sendmsg`` on loopback,
protobuf framing, an event-loop wake-up on the other side) whatever it carries, so the
ops per message say how well each hop amortizes that cost. The probe wraps
``CoreClient._apply`` (messages received from the node) and ``CoreClient._requests``
(messages sent to the node) in the driver and, through a generated ``sitecustomize`` on
PYTHONPATH, in every worker. The node's side of each stream is the mirror image: what a
worker or the driver receives is what the node sent on that stream. Diagnostic only: the
wrappers add a little cost per message, and nothing in ``runtime`` is changed on disk.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)

PATCH = r'''
import collections, json, os, time

def install(CoreClient, outdir):
    stats = {"recv_msgs": 0, "recv_ops": collections.Counter(), "sent_msgs": 0, "sent_ops": 0,
             "recv_hist": collections.Counter(), "sent_hist": collections.Counter()}
    last = [time.monotonic()]

    def dump(self):
        now = time.monotonic()
        if now - last[0] < 0.5:
            return
        last[0] = now
        path = os.path.join(outdir, f"{self.kind}-{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"kind": self.kind, "pid": os.getpid(), **stats}, f)
        os.replace(path + ".tmp", path)

    orig_apply = CoreClient._apply

    def _apply(self, batch):
        stats["recv_msgs"] += 1
        n = len(batch.ops)
        stats["recv_hist"][min(n, 64)] += 1
        for op in batch.ops:
            stats["recv_ops"][op.WhichOneof("op")] += 1
        orig_apply(self, batch)
        dump(self)

    orig_requests = CoreClient._requests

    async def _requests(self, hello):
        async for b in orig_requests(self, hello):
            stats["sent_msgs"] += 1
            stats["sent_ops"] += len(b.ops)
            stats["sent_hist"][min(len(b.ops), 64)] += 1
            yield b

    CoreClient._apply = _apply
    CoreClient._requests = _requests
    return lambda self: (last.__setitem__(0, 0.0), dump(self))
'''

SITE = r'''
import importlib.abc, importlib.machinery, os, sys
_OUT = os.environ.get("CELLRAY_PROBE_DIR")
_HERE = os.path.dirname(os.path.abspath(__file__))

class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "runtime.api._client" or not _OUT:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        orig = spec.loader.exec_module
        def exec_module(module):
            orig(module)
            sys.path.insert(0, _HERE)
            import cellray_probe_patch
            cellray_probe_patch.install(module.CoreClient, _OUT)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Finder())
'''


def child(row: str, seconds: float) -> None:
    sys.path.insert(0, PROJECT)
    sys.path.insert(0, HERE)
    import runtime as rt
    from microbench import Bench

    class A:
        batch, wait_n, fan_parents = 1000, 1000, 10
    rt.init(num_cpus=2)
    b = Bench(rt, A)
    fn = getattr(b, row)
    fn(0.5)                                  # warm up: workers started, functions loaded
    for f in glob.glob(os.path.join(os.environ["CELLRAY_PROBE_DIR"], "*.json")):
        os.unlink(f)                         # count only the measured loop
    t0 = time.perf_counter()
    tasks_per_s = fn(seconds)
    print(json.dumps({"rate": tasks_per_s, "elapsed": time.perf_counter() - t0}), flush=True)
    time.sleep(1.0)                          # let every process dump its counters
    rt.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", default="tasks_async")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return child(args.row, args.seconds)
    with tempfile.TemporaryDirectory(prefix="cellray-probe-") as tmp:
        site = os.path.join(tmp, "site")
        out = os.path.join(tmp, "out")
        os.makedirs(site)
        os.makedirs(out)
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(SITE)
        with open(os.path.join(site, "cellray_probe_patch.py"), "w") as f:
            f.write(PATCH)
        env = dict(os.environ, CELLRAY_PROBE_DIR=out)
        env["PYTHONPATH"] = os.pathsep.join([site, PROJECT, HERE] + (
            [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        cp = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child",
                             "--row", args.row, "--seconds", str(args.seconds)],
                            env=env, capture_output=True, text=True, timeout=300)
        if cp.returncode != 0:
            sys.exit(f"probe child failed:\n{cp.stderr[-3000:]}")
        res = json.loads([x for x in cp.stdout.splitlines() if x.startswith("{")][-1])
        rows = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "*.json")))]
    rate = res["rate"]
    print(f"# {args.row}: {rate:,.0f} items/s over {res['elapsed']:.1f} s "
          f"(probe wrappers on; ~{rate * res['elapsed']:,.0f} items)")
    print(f"{'process':18s} {'node->proc msgs':>15s} {'ops/msg':>8s} {'proc->node msgs':>15s} "
          f"{'ops/msg':>8s}  received op kinds")
    for r in rows:
        rops = sum(r["recv_ops"].values())
        print(f"{r['kind'] + ' ' + str(r['pid']):18s} {r['recv_msgs']:15,d} "
              f"{rops / max(r['recv_msgs'], 1):8.2f} {r['sent_msgs']:15,d} "
              f"{r['sent_ops'] / max(r['sent_msgs'], 1):8.2f}  {dict(r['recv_ops'])}")
    tot_msgs = sum(r["recv_msgs"] + r["sent_msgs"] for r in rows)
    items = rate * res["elapsed"]
    print(f"stream messages through the node per item: {tot_msgs / max(items, 1):.2f}")


if __name__ == "__main__":
    main()
