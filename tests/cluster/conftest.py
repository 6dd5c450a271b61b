"""Fixtures for the real-process tests: a shared cluster per module, and small helpers.

``cluster`` is module-scoped: it calls ``rt.init(**cluster_options)`` once for the file
and ``rt.shutdown()`` after its last test. A module overrides ``cluster_options`` to get
another configuration. Tests that start their own cluster (``rt.init`` in the test, or a
``LocalCluster``) must not request ``cluster``, and run before the first test that does
(the shared connection would make their ``rt.init`` fail).

Tasks in these tests never sleep to let time pass: a task that must stay running waits
for a flag file the test creates (``make_flag``), and the test waits on state with
``wait_for``.

Other fixtures: ``gcs`` (read the shared cluster's GCS tables), ``our_cluster_pids``
(this process's cluster processes by kind), ``assert_worker_serves`` (a given worker
still runs tasks), ``subprocess_env`` (the environment for a driver in a subprocess).
"""

from __future__ import annotations

import asyncio
import gc
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import psutil
import pytest

import runtime as rt
from runtime import _session
from runtime.gcs.client import GcsClient
from runtime.protocol import gcs_pb2

REPO = pathlib.Path(__file__).resolve().parents[2]

# Test modules are importable here but not in workers: ship their functions and classes
# (Flag below, tasks defined at module level in the test files) by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    """What ``rt.init`` gets for the module's shared cluster; override in a module."""
    return {"num_cpus": 2}


@pytest.fixture(scope="module")
def cluster(cluster_options: dict[str, Any]) -> Iterator[rt.ClusterInfo]:
    """One cluster for the whole module: ``rt.init`` before its first test, shut down after."""
    assert not rt.is_initialized(), "a previous test left rt initialized"
    info = rt.init(**cluster_options)
    try:
        yield info
    finally:
        rt.shutdown()
        gc.collect()  # now, under the test's warning filters, not at some later test


class Flag:
    """A file a task can wait on (``wait()`` inside the task) and the test sets."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)

    def set(self) -> None:
        pathlib.Path(self.path).touch()

    def is_set(self) -> bool:
        return os.path.exists(self.path)

    def wait(self, timeout: float = 60.0) -> None:
        """Block until set (called inside tasks; the poll interval is not a timing guess)."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"flag {self.path} was never set")
            time.sleep(0.01)


@pytest.fixture
def make_flag(tmp_path: pathlib.Path) -> Callable[[str], Flag]:
    """``make_flag("name")``: a fresh, unset Flag under ``tmp_path``."""

    def make(name: str) -> Flag:
        return Flag(tmp_path / f"flag-{name}")

    return make


def _barrier(directory: str, n: int) -> int:
    """A task that returns its worker's pid once ``n`` workers run it at the same time."""
    pathlib.Path(directory, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(directory)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(directory))} of {n} workers joined")
        time.sleep(0.01)
    return os.getpid()


@pytest.fixture
def assert_worker_serves(tmp_path: pathlib.Path) -> Callable[[int], None]:
    """``assert_worker_serves(pid)``: worker ``pid`` still runs tasks.

    Idle workers are reused most recent first, so a plain task may never land on a given
    one. Instead every worker of the node runs one task of a barrier at once (num_cpus=0,
    so CPUs do not limit them): a worker that no longer serves would be replaced by a new
    one, and its pid would be missing.
    """
    barrier = rt.remote(num_cpus=0, max_retries=0)(_barrier)
    rounds = iter(range(1000))

    def check(pid: int) -> None:
        workers = cluster_pids()["worker"]
        assert pid in workers, f"worker {pid} is gone"
        directory = tmp_path / f"barrier-{next(rounds)}"
        directory.mkdir()
        ran_on = set(rt.get([barrier.remote(str(directory), len(workers)) for _ in workers],
                            timeout=60))
        assert pid in ran_on, f"worker {pid} ran none of {len(workers)} concurrent tasks"

    return check


class Gcs:
    """Direct GCS access for one cluster: ``run(lambda gcs: gcs.ping())`` and table helpers."""

    def __init__(self, info: rt.ClusterInfo) -> None:
        self.address = info.address
        self.token = _session.read_token(info.token_file)

    def run(self, coro_fn: Callable[[GcsClient], Any]) -> Any:
        """``await coro_fn(gcs)`` with a fresh GcsClient, from sync code."""
        async def main() -> Any:
            async with GcsClient(self.address, self.token) as gcs:
                return await coro_fn(gcs)
        return asyncio.run(main())

    def task_rows(self) -> dict[bytes, gcs_pb2.TaskRow]:
        """The tasks table, by task id."""
        rows = self.run(lambda gcs: gcs.list_table("tasks"))
        return {k: gcs_pb2.TaskRow.FromString(v) for k, v in rows}

    def task_row(self, ref: rt.ObjectRef) -> gcs_pb2.TaskRow | None:
        """The row of the task that produces ``ref``, or None."""
        raw = self.run(lambda gcs: gcs.get_entry("tasks", bytes.fromhex(ref.task_id())))
        return None if raw is None else gcs_pb2.TaskRow.FromString(raw)


@pytest.fixture(scope="module")
def gcs(cluster: rt.ClusterInfo) -> Gcs:
    """Direct access to the shared cluster's GCS."""
    return Gcs(cluster)


def driver_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess driver: this checkout importable, ``extra`` on top."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("CELLRAY_ADDRESS", None)
    env.update(extra)
    return env


@pytest.fixture
def subprocess_env() -> Callable[..., dict[str, str]]:
    """``subprocess_env(NAME=value)``: the environment for a subprocess driver."""
    return driver_env


def cluster_pids() -> dict[str, list[int]]:
    """Pids of this process's cluster descendants, by kind (gcs, scheduler, node, worker)."""
    out: dict[str, list[int]] = {"gcs": [], "scheduler": [], "node": [], "worker": []}
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        for kind in out:
            if f"runtime.{kind}" in cmd:
                out[kind].append(p.pid)
    return out


@pytest.fixture
def our_cluster_pids() -> Callable[[], dict[str, list[int]]]:
    """``our_cluster_pids()``: pids of this process's gcs, scheduler, node and worker descendants."""
    return cluster_pids
