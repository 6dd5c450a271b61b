"""The node's memory monitor on real processes: a task that pushes the machine past the
threshold has its worker killed and fails with ``OutOfMemoryError``; an actor on the
same node lives on, and the node keeps serving.

The machine is shared with other test runs, so nothing here assumes how much memory is
free: the threshold is set ``MARGIN`` above the fraction in use when the module starts,
and the task (``hog``) allocates in chunks until the machine is past that threshold, then
holds its memory until the monitor kills it. ``MARGIN`` leaves room for the cluster's own
processes and for what other runs allocate meanwhile.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
import psutil
import pytest

import runtime as rt
from runtime import config
from runtime.exceptions import OutOfMemoryError
from runtime.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Memory above the use at start where the threshold lies, in bytes.
MARGIN = 512 * 2**20
#: Most a hog allocates (it stops there, unkilled, if the machine never gets past the threshold).
CAP = 1536 * 2**20
CHUNK = 32 * 2**20
#: OOM retries of the module's cluster.
OOM_RETRIES = 2


def _used_fraction() -> float:
    vm = psutil.virtual_memory()
    return (vm.total - vm.available) / vm.total


@pytest.fixture(scope="module")
def threshold() -> float:
    value = _used_fraction() + MARGIN / psutil.virtual_memory().total
    if value > 0.97:
        pytest.skip(f"the machine's memory is nearly full already ({_used_fraction():.0%})")
    return round(value, 4)


@pytest.fixture(scope="module")
def cluster_options(threshold: float) -> dict[str, Any]:
    settings = config.load().override(memory_usage_threshold=threshold, memory_monitor_ms=50,
                                      task_oom_retries=OOM_RETRIES)
    return {"num_cpus": 2, "_settings": settings}


def hog(threshold: float, pid_dir: str) -> int:
    """Allocate (and touch) memory until the machine is past ``threshold``, then hold it
    until the monitor kills this worker; returns how much it held if that never happens."""
    pathlib.Path(pid_dir, str(os.getpid())).touch()
    total = psutil.virtual_memory().total
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        vm = psutil.virtual_memory()
        over = (vm.total - vm.available - CHUNK) / total > threshold  # one chunk past it
        if not over and len(chunks) * CHUNK < CAP:
            chunks.append(b"\x01" * CHUNK)  # written, so resident (a bytearray would not be)
        else:
            time.sleep(0.01)  # holding: the poll interval of a process waiting to be killed
    return len(chunks) * CHUNK


@rt.remote
class Keeper:
    def pid(self) -> int:
        return os.getpid()


@rt.remote
def add(a: int, b: int) -> int:
    return a + b


def _pids(directory: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir())


def test_a_task_past_the_threshold_fails_with_out_of_memory_and_an_actor_lives_on(
        cluster: rt.ClusterInfo, threshold: float, tmp_path: pathlib.Path,
        our_cluster_pids: Callable[[], dict[str, list[int]]]) -> None:
    keeper = Keeper.remote()
    keeper_pid = rt.get(keeper.pid.remote(), timeout=30)
    node_pids = our_cluster_pids()["node"]

    ref = rt.remote(max_retries=0)(hog).remote(threshold, str(tmp_path))
    with pytest.raises(OutOfMemoryError) as info:
        rt.get(ref, timeout=120)
    err = info.value
    [pid] = _pids(tmp_path)  # max_retries=0: it ran once, not retried for memory
    text = str(err)
    assert text.startswith("Task hog() (task "), text
    assert "was killed by the memory monitor: node " in text
    assert re.search(r"used \d+\.\d GiB of \d+\.\d GiB memory \(\d+\.\d+ % > threshold \d+\.\d+ %\)",
                     text), text
    assert f"its worker (pid {pid}) used " in text and "(RSS)" in text
    assert "It is not retried: its max_retries is 0" in text
    assert "CELLRAY_MEMORY_USAGE_THRESHOLD" in text
    assert err.pid == pid and err.threshold == threshold and err.memory_used > threshold * err.memory_total

    assert rt.get(keeper.pid.remote(), timeout=30) == keeper_pid  # actors are killed last
    assert our_cluster_pids()["node"] == node_pids
    assert rt.get([add.remote(i, 1) for i in range(4)], timeout=30) == [1, 2, 3, 4]
    rt.kill(keeper)


def test_oom_retries_are_counted_apart_from_max_retries(
        cluster: rt.ClusterInfo, threshold: float, tmp_path: pathlib.Path, gcs: Any) -> None:
    ref = rt.remote(max_retries=1)(hog).remote(threshold, str(tmp_path))
    with pytest.raises(OutOfMemoryError) as info:
        rt.get(ref, timeout=150)
    text = str(info.value)
    # Killed 1 + OOM_RETRIES times, each in a new worker; max_retries=1 never used.
    assert len(_pids(tmp_path)) == 1 + OOM_RETRIES
    assert f"It was killed {1 + OOM_RETRIES} time(s), its task_oom_retries={OOM_RETRIES} are spent" in text
    assert "they do not count against its max_retries=1" in text
    assert info.value.pid in _pids(tmp_path)

    def final_row() -> Any:
        row = gcs.task_row(ref)
        return row if row is not None and row.state == "FAILED" else None
    row = wait_for(final_row, what="the hog's FAILED row in the GCS")
    retries = [h for h in row.history if h.state == "RETRYING"]
    assert len(retries) == OOM_RETRIES
    assert all("killed by the memory monitor" in h.detail for h in retries)
    assert row.attempt == 0  # the attempts of max_retries are untouched
    assert rt.get([add.remote(i, 1) for i in range(4)], timeout=30) == [1, 2, 3, 4]
