#!/usr/bin/env python3
"""Profile cellray's task path with py-spy while a driver runs a tasks-async loop.

Usage (from the repository root; py-spy is in the dev venv)::

    .venv/bin/python bench/profile_task_path.py                  # tasks_async, 10 s per process
    .venv/bin/python bench/profile_task_path.py --row actor_async --seconds 8 --out /tmp/prof

What it does:

1. starts ``bench/microbench.py --soak ROW`` (a driver that loops the row) and reads the
   pids of its driver, GCS, node manager and workers;
2. measures each process's CPU use (user+sys, psutil) over ``--cpu-window`` seconds, so
   you see which process saturates on this machine (2 cores here);
3. records each of driver, node, one busy worker and the GCS with ``py-spy record
   --gil -F -f raw`` one after another (one at a time, so py-spy itself takes at
   most one core), and writes ``<out>/<proc>.raw`` (collapsed stacks: open them in
   speedscope or flamegraph.pl) plus ``<out>/summary.txt``;
4. prints, per process, the functions with the most self samples and the most inclusive
   samples (a stack counts once per function).

py-spy samples only Python frames: time spent in C (protobuf/upb, grpc, pickle) is
charged to the Python line that called it. Samples are taken with ``--gil`` (only the
thread holding the GIL): on this VM py-spy's idle detection does not work (epoll and
Condition.wait show up as busy), and GIL-holding time is what competes for a core. Work
that grpc's C core does without the GIL is not in the samples; the CPU table covers it.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PYSPY = os.path.join(os.path.dirname(sys.executable), "py-spy")


def classify(cmd: str) -> str:
    if "runtime.gcs" in cmd:
        return "gcs"
    if "runtime.node" in cmd:
        return "node"
    if "runtime.worker" in cmd:
        return "worker"
    if "runtime.scheduler" in cmd:
        return "scheduler"
    return "other"


def cpu_table(pids: dict[int, str], window: float) -> list[tuple[str, int, float]]:
    import psutil
    procs = {}
    for pid in pids:
        try:
            procs[pid] = psutil.Process(pid)
        except psutil.Error:
            pass

    def t(p):
        try:
            c = p.cpu_times()
            return c.user + c.system
        except psutil.Error:
            return None
    t0 = {pid: t(p) for pid, p in procs.items()}
    time.sleep(window)
    rows = []
    for pid, p in procs.items():
        a, b = t0[pid], t(p)
        if a is not None and b is not None:
            rows.append((pids[pid], pid, (b - a) / window))
    return sorted(rows, key=lambda r: -r[2])


def summarize(raw_path: str, top: int) -> str:
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            try:
                k = int(n)
            except ValueError:
                continue
            frames = stack.split(";")
            # drop the "process ..." and "thread ..." pseudo-frames
            frames = [x for x in frames if not x.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += k
            self_c[frames[-1]] += k
            for fr in set(frames):
                incl_c[fr] += k
    out = [f"  {total} samples (non-idle)"]
    out.append("  -- self (leaf) --")
    for fr, k in self_c.most_common(top):
        out.append(f"  {100 * k / max(total, 1):5.1f}%  {fr}")
    out.append("  -- inclusive --")
    for fr, k in incl_c.most_common(top + 10):
        out.append(f"  {100 * k / max(total, 1):5.1f}%  {fr}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", default="tasks_async")
    ap.add_argument("--seconds", type=float, default=10.0, help="py-spy time per process")
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--cpu-window", type=float, default=5.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default="/tmp/cellray-profile")
    ap.add_argument("--procs", default="driver,node,worker,gcs")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    which = args.procs.split(",")
    soak_s = 8 + args.cpu_window + len(which) * (args.seconds + 3)
    drv = subprocess.Popen([sys.executable, os.path.join(HERE, "microbench.py"), "--soak", args.row,
                            "--seconds", str(soak_s)], stdout=subprocess.PIPE,
                           stderr=open(os.path.join(args.out, "soak.log"), "w"), text=True)
    report = []
    try:
        info = json.loads(drv.stdout.readline())
        pids = {info["driver"]: "driver"}
        for pid, cmd in info["processes"].items():
            pids[int(pid)] = classify(cmd)
        time.sleep(3.0)   # let the loop reach steady state (workers started, caches warm)
        import psutil
        for c in psutil.Process(info["driver"]).children(recursive=True):
            pids.setdefault(c.pid, classify(" ".join(c.cmdline())))
        cpu = cpu_table(pids, args.cpu_window)
        report.append(f"# {args.row}: CPU use per process over {args.cpu_window:g} s "
                      f"(1.00 = one core; machine has {os.cpu_count()} cores)")
        for name, pid, u in cpu:
            report.append(f"  {name:7s} pid {pid:7d}  {u:5.2f}")
        report.append(f"  total   {sum(u for _, _, u in cpu):5.2f}")
        busiest_worker = next((pid for name, pid, _ in cpu if name == "worker"), None)
        targets = []
        for w in which:
            if w == "worker":
                if busiest_worker:
                    targets.append(("worker", busiest_worker))
            else:
                targets += [(w, pid) for pid, n in pids.items() if n == w][:1]
        for name, pid in targets:
            raw = os.path.join(args.out, f"{name}.raw")
            cmd = [PYSPY, "record", "-p", str(pid), "-d", str(max(1, round(args.seconds))), "-r", str(args.rate),
                   "--gil", "-F", "-f", "raw", "-o", raw]
            if name == "driver":
                cmd.append("--threads")
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            report.append(f"\n# {name} (pid {pid}), {args.seconds:g} s at {args.rate} Hz: {raw}")
            report.append(summarize(raw, args.top) if os.path.exists(raw) else "  (no samples)")
    finally:
        drv.send_signal(signal.SIGINT)   # KeyboardInterrupt: the driver's finally shuts down
        try:
            drv.wait(30)
        except subprocess.TimeoutExpired:
            drv.kill()
            drv.wait()
    text = "\n".join(report)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
