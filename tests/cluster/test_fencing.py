"""Fencing (issue 12, point 4): a node declared dead never comes back under its old id.

A node paused with SIGSTOP past the heartbeat timeout is declared dead, and its tasks run
again elsewhere. Woken with SIGCONT it used to register again under its old id, take new
work, and run tasks a second time. Now the GCS refuses its id: the node stops the workers
it had (their tasks run elsewhere), drops its state and rejoins under a new id with
nothing running, and each task's result is delivered once. Real processes; the tasks hold
on a flag file and log what they do, so the test counts executions instead of timing them.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import psutil
import pytest

import runtime as rt
from runtime import _session, config, state
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.exceptions import ConnectionLostError
from runtime.gcs.client import GcsClient
from runtime.protocol import gcs_pb2
from runtime.testing.wait import wait_for
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.cluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = config.load(heartbeat_ms=100, node_timeout_ms=1500, spill_threshold=2)
TASKS = 16

#: One line of the log the tasks keep: (what, task index, node id, worker pid).
Line = tuple[str, int, str, int]


@pytest.fixture
def three_nodes(tmp_path: pathlib.Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster([NodeSpec(num_cpus=1), NodeSpec(num_cpus=2), NodeSpec(num_cpus=2)],
                           settings=FAST, session_root=tmp_path / "s").start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        yield cluster
    finally:
        rt.shutdown()
        for node in cluster.nodes:  # a node a failed test left paused could not stop gracefully
            if node.alive():
                os.kill(node.pid, signal.SIGCONT)
        cluster.stop()


def _note(log: str, what: str, i: int, node: str) -> None:
    with open(log, "a") as f:  # one short append per line: lines of concurrent tasks never mix
        f.write(f"{what} {i} {node} {os.getpid()}\n")


def _run(i: int, log: str, flag: Any) -> tuple[int, str]:
    """Task ``i``: logs its start, holds until ``flag``, logs its end; returns where it ran."""
    node = rt.get_runtime_context().get_node_id()
    _note(log, "start", i, node)
    flag.wait()
    _note(log, "done", i, node)
    return i, node


def _where() -> str:
    return rt.get_runtime_context().get_node_id()


def _lines(log: pathlib.Path) -> list[Line]:
    out: list[Line] = []
    for text in log.read_text().splitlines():
        what, i, node, pid = text.split()
        out.append((what, int(i), node, int(pid)))
    return out


def _node(node_id: str) -> state.NodeState | None:
    return next((n for n in state.list_nodes() if n.node_id == node_id), None)


def _rows(cluster: LocalCluster) -> list[gcs_pb2.NodeRow]:
    """The nodes table, read straight from the GCS (no driver needed)."""
    async def main() -> list[gcs_pb2.NodeRow]:
        async with GcsClient(cluster.address, _session.read_token(str(cluster.token_file))) as gcs:
            return [gcs_pb2.NodeRow.FromString(v) for _, v in await gcs.list_table("nodes")]
    return asyncio.run(main())


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_paused_node_declared_dead_rejoins_under_a_new_id_and_no_task_runs_twice(
        three_nodes: LocalCluster, tmp_path: pathlib.Path, make_flag: Callable[[str], Any]) -> None:
    victim = three_nodes.nodes[1]
    old_id = three_nodes.node_info[1]["node_id"]
    log = tmp_path / "runs.log"
    log.touch()
    flag = make_flag("go")
    task = rt.remote(num_cpus=1, max_retries=3)(_run)
    refs = [task.remote(i, str(log), flag) for i in range(TASKS)]

    def running_on_victim() -> list[Line] | None:
        started = [line for line in _lines(log) if line[2] == old_id]
        return started if len(started) == 2 else None

    # Both CPUs of node 1 run a task; none can end (or free a CPU) before the flag is set.
    before = wait_for(running_on_victim, timeout=60, what="two tasks running on node 1")
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: (n := _node(old_id)) is not None and not n.alive, timeout=30,
                 what="node 1 declared dead while paused")
    finally:
        os.kill(victim.pid, signal.SIGCONT)

    rejoined = wait_for(lambda: next((n for n in state.list_nodes() if n.alive and n.pid == victim.pid
                                      and n.node_id != old_id), None),
                        timeout=60, what="node 1's process alive again under a new id")
    # It stopped the workers it had: their tasks run elsewhere, nothing runs there any more.
    wait_for(lambda: all(_gone(pid) for *_, pid in before), timeout=30,
             what="the workers of the fenced node gone")
    assert victim.alive()
    flag.set()

    results = rt.get(refs, timeout=120)
    assert [i for i, _ in results] == list(range(TASKS))
    assert old_id not in {node for _, node in results}
    lines = _lines(log)
    assert Counter(i for what, i, _, _ in lines if what == "done") == Counter(range(TASKS)), \
        "each task must end exactly once"
    assert [line for line in lines if line[2] == old_id] == before, \
        "nothing may start or end under the dead id after it was declared dead"
    [old] = [n for n in rt.nodes() if n["NodeID"] == old_id]
    assert old["Alive"] is False  # the dead id stays dead
    assert (_node(old_id) or pytest.fail("the old row is gone")).death_cause.startswith("no heartbeat")

    # The rejoined node takes new work under its new id.
    pinned = rt.remote(num_cpus=1)(_where).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(rejoined.node_id, soft=False))
    assert rt.get([pinned.remote() for _ in range(4)], timeout=60) == [rejoined.node_id] * 4
    assert (_node(rejoined.node_id) or pytest.fail("the new row is gone")).alive


def test_a_driver_on_a_fenced_node_loses_its_session_with_the_reason_and_can_connect_again(
        tmp_path: pathlib.Path, make_flag: Callable[[str], Any]) -> None:
    cluster = LocalCluster([NodeSpec(num_cpus=1)], settings=FAST, session_root=tmp_path / "s").start()
    node = cluster.nodes[0]
    try:
        info = rt.init(address=cluster.address, token_file=str(cluster.token_file))
        old_id = info.node_id
        flag = make_flag("never")  # the task holds until its node is fenced
        log = tmp_path / "runs.log"
        log.touch()
        ref = rt.remote(num_cpus=1, max_retries=0)(_run).remote(0, str(log), flag)
        wait_for(lambda: _lines(log), timeout=60, what="the task running")
        os.kill(node.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: (n := _node(old_id)) is not None and not n.alive, timeout=30,
                     what="the node declared dead while paused")
        finally:
            os.kill(node.pid, signal.SIGCONT)
        why = rf"node {old_id[:12]} .*was declared dead.*call runtime.init\(\) again to connect"
        with pytest.raises(ConnectionLostError, match=why):
            rt.get(ref, timeout=60)
        rt.shutdown()
        rejoined = wait_for(lambda: next((n for n in _rows(cluster) if n.alive and n.pid == node.pid
                                          and n.node_id.hex() != old_id), None),
                            timeout=60, what="the node's process alive again under a new id")
        again = rt.init(address=cluster.address, token_file=str(cluster.token_file))
        assert again.node_id == rejoined.node_id.hex()
        assert rt.get(rt.remote(_where).remote(), timeout=60) == again.node_id
    finally:
        rt.shutdown()
        if node.alive():
            os.kill(node.pid, signal.SIGCONT)
        cluster.stop()
