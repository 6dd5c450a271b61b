#!/usr/bin/env python3
"""GCS writes per second and restart-to-serving time with each storage backend (issue 13, point 8).

    .venv/bin/python bench/gcs_storage.py                      # every row, ~2 minutes
    .venv/bin/python bench/gcs_storage.py --quick              # smaller counts
    .venv/bin/python bench/gcs_storage.py --backends memory,sqlite --md /tmp/out.md

Backends: ``memory``, ``sqlite`` (a file in a temporary session directory), and
``redis-1``, ``redis-2``, ``redis-4`` (that many local redis-server processes, each GCS
shard on server ``shard mod n``; skipped when redis-server is not installed). Rows:

``state kv, loop`` and ``state kv, saved``
    ``GcsState.put`` on the ``kv`` table in a loop, 100-byte values, then ``flush()``:
    writes per second of the loop alone (what the GCS's event loop pays: the durable
    backends write behind, in a thread), and until everything is saved (``flush()``
    returned).
``state events``
    ``GcsState.report_events`` in batches of 100 task events (SUBMITTED, RUNNING,
    FINISHED per task: a read-modify-write of the task's row each), then ``flush()``.
``service``
    The real GCS process (``python -m runtime.gcs``), 8 concurrent clients calling
    ``Tables.Put`` and 2 calling ``ReportEvents`` (100 events a call): rows written per
    second as the clients see them acknowledged.
``tasks``
    A local cluster (``rt.init(num_cpus=2)`` in a fresh process, its GCS on the backend
    through ``CELLRAY_GCS_STORAGE`` / ``CELLRAY_REDIS_SHARDS``): tasks per second of
    2,000 no-op tasks submitted at once, then ``get``, best of 3 rounds after a warm-up.
``restart``
    The GCS process holding ``--rows`` task rows, killed with SIGKILL, started again on
    the same port and storage: seconds from the start until it answers ``Ping``.

Each row is the median of ``--repeats`` runs; the ratio column is to ``memory``. A
script, not a test: it asserts nothing. Machines here are shared; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from runtime._session import read_token, write_token  # noqa: E402
from runtime.cluster.process import ProcessHandle  # noqa: E402
from runtime.gcs.client import GcsClient  # noqa: E402
from runtime.gcs.redis_servers import LocalRedisServers, redis_server_path  # noqa: E402
from runtime.gcs.state import GcsState  # noqa: E402
from runtime.gcs.storage_open import GcsStorage, open_spec  # noqa: E402
from runtime.gcs.storage_url import StorageSpec  # noqa: E402
from runtime.protocol import common_pb2  # noqa: E402

BACKENDS = ("memory", "sqlite", "redis-1", "redis-2", "redis-4")
NUM_SHARDS = 4


def _events(first: int, tasks: int) -> list[common_pb2.TaskEvent]:
    out = []
    for t in range(first, first + tasks):
        tid = t.to_bytes(16, "big")
        out += [common_pb2.TaskEvent(task_id=tid, state=s, name="f", node_id=b"n" * 16)
                for s in ("SUBMITTED", "RUNNING", "FINISHED")]
    return out


# ---- through GcsState ----


def _open(backend: str, tmp: pathlib.Path, stack: ExitStack) -> GcsStorage:
    if backend == "memory":
        return open_spec(StorageSpec("memory"), NUM_SHARDS)
    if backend == "sqlite":
        return open_spec(StorageSpec("sqlite", path=str(tmp / "gcs.db")), NUM_SHARDS)
    servers = LocalRedisServers(int(backend.split("-")[1]), tmp / "redis")
    servers.start()
    stack.callback(servers.stop)
    return open_spec(StorageSpec("redis", servers=tuple(servers.addresses)), NUM_SHARDS)


def state_kv(backend: str, writes: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d, ExitStack() as stack:
        storage = _open(backend, pathlib.Path(d), stack)
        state = GcsState(NUM_SHARDS, storage_factory=storage.factory(), max_tasks=10**9)
        value = b"v" * 100
        start = time.perf_counter()
        for i in range(writes):
            state.put("kv", b"key-%d" % i, value)
            if i % 1000 == 0:
                state.take_changes()
        looped = time.perf_counter() - start
        storage.flush()
        elapsed = time.perf_counter() - start
        state.close()
        storage.close()
    return writes / looped, writes / elapsed


def state_events(backend: str, tasks: int) -> float:
    with tempfile.TemporaryDirectory() as d, ExitStack() as stack:
        storage = _open(backend, pathlib.Path(d), stack)
        state = GcsState(NUM_SHARDS, storage_factory=storage.factory(), max_tasks=10**9)
        batches = [_events(t, 33) for t in range(0, tasks, 33)]
        start = time.perf_counter()
        for batch in batches:
            state.report_events(batch, ())
            state.take_changes()
        storage.flush()
        elapsed = time.perf_counter() - start
        state.close()
        storage.close()
    return sum(len(b) for b in batches) / elapsed


# ---- through the GCS process ----


def _gcs_args(backend: str) -> list[str]:
    if backend == "memory":
        return ["--gcs-storage", "memory"]
    if backend == "sqlite":
        return ["--gcs-storage", "sqlite"]
    return ["--redis-shards", backend.split("-")[1]]


def _start(session: pathlib.Path, backend: str, port: int = 0) -> ProcessHandle:
    (session / "gcs.ready").unlink(missing_ok=True)
    args = ["--host", "127.0.0.1", "--port", str(port), "--session-dir", str(session),
            "--token-file", str(session / "token"), "--num-shards", str(NUM_SHARDS),
            "--node-timeout-ms", "600000", "--parent-pid", str(os.getpid()), *_gcs_args(backend)]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    return ProcessHandle("gcs", "runtime.gcs", args, session / "logs" / "gcs.log", session / "gcs.ready",
                         env=env)


async def _hammer(address: str, token: str, seconds: float) -> int:
    done = 0
    deadline = time.perf_counter() + seconds

    async def putter(n: int) -> None:
        nonlocal done
        async with GcsClient(address, token) as gcs:
            i = 0
            while time.perf_counter() < deadline:
                await gcs.put("kv", b"k-%d-%d" % (n, i), b"v" * 100)
                i += 1
                done += 1

    async def reporter(n: int) -> None:
        nonlocal done
        async with GcsClient(address, token) as gcs:
            t = n * 10**8
            while time.perf_counter() < deadline:
                batch = _events(t, 33)
                await gcs.report_events(batch[:99])
                t += 33
                done += 99

    await asyncio.gather(*[putter(n) for n in range(8)], *[reporter(n) for n in range(2)])
    return done


async def _fill(address: str, token: str, rows: int) -> None:
    async with GcsClient(address, token) as gcs:
        for t in range(0, rows, 330):
            await gcs.report_events(_events(t, min(330, rows - t)))


def service(backend: str, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as d:
        session = pathlib.Path(d)
        write_token(session)
        head = _start(session, backend)
        try:
            info = head.wait_ready(60)
            start = time.perf_counter()
            done = asyncio.run(_hammer(info["address"], read_token(session / "token"), seconds))
            return done / (time.perf_counter() - start)
        finally:
            head.stop(10)


async def _ping(address: str, token: str) -> None:
    async with GcsClient(address, token) as gcs:
        await gcs.ping()


def restart(backend: str, rows: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        session = pathlib.Path(d)
        write_token(session)
        token = read_token(session / "token")
        head = _start(session, backend)
        again = None
        try:
            info = head.wait_ready(60)
            asyncio.run(_fill(info["address"], token, rows))
            asyncio.run(_ping(info["address"], token))
            time.sleep(0.5)  # a bench, not a test: let the last batch reach the storage
            os.kill(head.pid, signal.SIGKILL)
            head.popen.wait()
            start = time.perf_counter()
            again = _start(session, backend, port=info["port"])
            again.wait_ready(120)
            asyncio.run(_ping(info["address"], token))
            return time.perf_counter() - start
        finally:
            head.stop(10)
            if again is not None:
                again.stop(10)


_TASKS = """
import sys, time
import runtime as rt
rt.init(num_cpus=2)
@rt.remote
def f(x):
    return x
rt.get([f.remote(i) for i in range(200)])
rates = []
for _ in range(3):
    t = time.perf_counter()
    rt.get([f.remote(i) for i in range(2000)])
    rates.append(2000 / (time.perf_counter() - t))
rt.shutdown()
print(max(rates))
"""


def tasks(backend: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    if backend.startswith("redis"):
        env["CELLRAY_REDIS_SHARDS"] = backend.split("-")[1]
    else:
        env["CELLRAY_GCS_STORAGE"] = backend
    with tempfile.TemporaryDirectory() as d:
        env["CELLRAY_TMPDIR"] = d
        out = subprocess.run([sys.executable, "-c", _TASKS], env=env, capture_output=True, text=True,
                             timeout=300, check=True)
    return float(out.stdout.strip().splitlines()[-1])


# ---- the table ----


def _median(fn: Callable[[], float], repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def _medians(fn: Callable[[], tuple[float, float]], repeats: int) -> tuple[float, float]:
    runs = [fn() for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--writes", type=int, default=100_000, help="kv writes through GcsState")
    ap.add_argument("--tasks", type=int, default=20_000, help="tasks (3 events each) through GcsState")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of the service run")
    ap.add_argument("--rows", type=int, default=50_000, help="task rows the GCS holds when restarted")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a tenth of the counts, one repeat")
    ap.add_argument("--md", type=pathlib.Path, default=None, help="also write the table here")
    args = ap.parse_args()
    if args.quick:
        args.writes, args.tasks, args.seconds, args.rows, args.repeats = 10_000, 2_000, 1.0, 5_000, 1
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if redis_server_path() is None:
        print("redis-server is not installed: the redis rows are skipped (apt-get install redis-server)")
        backends = [b for b in backends if not b.startswith("redis")]
    rows: dict[str, dict[str, float]] = {}
    for backend in backends:
        loop, saved = _medians(lambda b=backend: state_kv(b, args.writes), args.repeats)
        rows[backend] = {
            "state kv, loop (writes/s)": loop,
            "state kv, saved (writes/s)": saved,
            "state events (writes/s)": _median(lambda b=backend: state_events(b, args.tasks), args.repeats),
            "service (writes/s)": _median(lambda b=backend: service(b, args.seconds), args.repeats),
            "tasks (tasks/s)": _median(lambda b=backend: tasks(b), args.repeats),
            f"restart, {args.rows} rows (s)": _median(lambda b=backend: restart(b, args.rows), args.repeats),
        }
        print(backend, {k: round(v, 3) for k, v in rows[backend].items()}, flush=True)
    head = (f"GCS storage, {NUM_SHARDS} GCS shards; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
            f"median of {args.repeats}")
    lines = [head, "",
             "| row | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    for row in next(iter(rows.values())):
        base = rows.get("memory", {}).get(row)
        cells = []
        for backend in backends:
            value = rows[backend][row]
            figure = f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
            cells.append(figure + (f" ({value / base:.2f}x)" if base else ""))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.md is not None:
        args.md.write_text(table + "\n")


if __name__ == "__main__":
    main()
