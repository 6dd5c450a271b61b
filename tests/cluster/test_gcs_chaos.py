"""Chaos: the GCS killed three times while 2,000 tasks and 200 actor calls run, and none
of them is lost (issue 13, Tests). Real processes: the head (a supervisor thread of the
LocalCluster) brings the GCS back each time from its SQLite storage, on its address."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal

import pytest

import runtime as rt
from runtime import _session
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.exceptions import ClusterError
from runtime.gcs.client import GcsClient
from runtime.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@rt.remote
def square(x: int) -> int:
    return x * x


@rt.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


def _gcs_pid(cluster: LocalCluster) -> int | None:
    """The pid of the GCS answering at the cluster's address (None while none answers)."""
    assert cluster.token_file is not None
    token = _session.read_token(cluster.token_file)

    async def ping() -> int:
        async with GcsClient(cluster.address, token, timeout=2.0) as gcs:
            return (await gcs.ping()).pid

    try:
        return asyncio.run(ping())
    except (ClusterError, TimeoutError):
        return None


def test_three_gcs_restarts_during_2000_tasks_and_200_actor_calls_lose_nothing(
        tmp_path: pathlib.Path) -> None:
    cluster = LocalCluster([NodeSpec(num_cpus=2), NodeSpec(num_cpus=2)],
                           session_root=tmp_path / "s").start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        counter = Counter.remote()
        assert rt.get(counter.incr.remote(), timeout=60) == 1
        tasks: list[rt.ObjectRef] = []
        calls: list[rt.ObjectRef] = []
        for round_ in range(4):
            tasks += [square.remote(i) for i in range(round_ * 500, (round_ + 1) * 500)]
            calls += [counter.incr.remote() for _ in range(50)]
            if round_ == 3:
                break
            old = cluster.gcs_pid
            os.kill(old, signal.SIGKILL)  # while those run
            wait_for(lambda: (pid := _gcs_pid(cluster)) is not None and pid != old,
                     timeout=60, what=f"the GCS back after kill {round_ + 1}")
            # Work goes on between the outages (a task sent now runs) before the next kill:
            # three restarts, not one outage three times as long.
            assert rt.get(square.remote(-1), timeout=120) == 1
        assert rt.get(tasks, timeout=300) == [i * i for i in range(2000)]
        # Calls of one caller run in order, each once: 2, 3, ... 201 (1 was the first call).
        assert rt.get(calls, timeout=300) == list(range(2, 202))
        assert cluster.restarts.gcs == 3
    finally:
        rt.shutdown()
        cluster.stop()
