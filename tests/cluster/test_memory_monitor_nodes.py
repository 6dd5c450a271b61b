"""The memory monitor on three nodes: a task running on a node other than its caller's is
killed there when the machine is past the threshold, its error reaches the caller naming
that node and the worker, an actor on that node lives on, and every node keeps serving.

The threshold is set as in ``test_memory_monitor`` (a margin above the memory in use when
the module starts); all three nodes share this machine's memory, so each one's monitor
sees the same pressure and kills only its own workers.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import psutil
import pytest

import runtime as rt
from runtime import config
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.exceptions import OutOfMemoryError
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tests.cluster.test_memory_monitor import MARGIN, _pids, _used_fraction, hog

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


@pytest.fixture
def three_nodes(tmp_path: pathlib.Path) -> Iterator[LocalCluster]:
    threshold = _used_fraction() + MARGIN / psutil.virtual_memory().total
    if threshold > 0.97:
        pytest.skip(f"the machine's memory is nearly full already ({_used_fraction():.0%})")
    settings = config.load(heartbeat_ms=100, node_timeout_ms=5000).override(
        memory_usage_threshold=round(threshold, 4), memory_monitor_ms=50, task_oom_retries=1)
    cluster = LocalCluster([NodeSpec(num_cpus=1), NodeSpec(num_cpus=1), NodeSpec(num_cpus=2)],
                           settings=settings, session_root=tmp_path / "s").start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        yield cluster
    finally:
        rt.shutdown()
        cluster.stop()


@rt.remote
class Keeper:
    def where(self) -> tuple[int, str]:
        return os.getpid(), rt.get_runtime_context().get_node_id()


@rt.remote
def node_of(i: int) -> tuple[int, str]:
    return i, rt.get_runtime_context().get_node_id()


def test_a_task_killed_for_memory_on_another_node_fails_there_and_every_node_serves_on(
        three_nodes: LocalCluster, tmp_path: pathlib.Path) -> None:
    far = three_nodes.node_info[2]["node_id"]
    on_far = NodeAffinitySchedulingStrategy(far, soft=False)
    keeper = Keeper.options(scheduling_strategy=on_far).remote()
    keeper_pid, keeper_node = rt.get(keeper.where.remote(), timeout=60)
    assert keeper_node == far

    threshold = three_nodes.settings.memory_usage_threshold
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    ref = rt.remote(max_retries=1)(hog).options(scheduling_strategy=on_far).remote(threshold, str(pid_dir))
    with pytest.raises(OutOfMemoryError) as info:
        rt.get(ref, timeout=150)
    err = info.value
    pids = _pids(pid_dir)
    # Killed once, then once more for its one OOM retry (max_retries untouched), each in a new worker.
    assert len(pids) == 2 and err.pid in pids
    text = str(err)
    assert err.node_id == far and "was killed by the memory monitor: node " in text, text
    assert f"its worker (pid {err.pid}) used " in text and "do not count against its max_retries=1" in text

    assert rt.get(keeper.where.remote(), timeout=60) == (keeper_pid, far)  # actors go last
    nodes = {n["node_id"] for n in three_nodes.node_info}
    per_node = [rt.get(node_of.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
                       .remote(i), timeout=60) for i, n in enumerate(sorted(nodes))]
    assert [i for i, _ in per_node] == [0, 1, 2] and {n for _, n in per_node} == nodes
    rt.kill(keeper)
