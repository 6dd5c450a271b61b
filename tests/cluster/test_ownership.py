"""When an owner dies, what it owned goes with it (issue 12, point 3). Real processes: a
driver in a subprocess is killed with SIGKILL while its task runs and a detached actor
borrows its object; on one node, and with the task and the actor on other nodes. A driver
killed with tasks still waiting (for a CPU, for an input) takes them along unrun. A worker
killed while idle takes the object it put (and returned inside a result) with it.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

import runtime as rt
from runtime import config, state
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.testing.wait import wait_for
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.cluster

FAST = config.load(heartbeat_ms=100, node_timeout_ms=1500)

DRIVER = """
import json, os, sys, time
import numpy as np
import runtime as rt
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy
out, address, token_file, flag, node = sys.argv[1:6]
rt.init(address=address, token_file=token_file)

@rt.remote(max_retries=0)
def spin(flag):
    while not os.path.exists(flag):
        time.sleep(0.01)
    return "done"

if node:
    spin = spin.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
keeper = rt.get_actor("keeper", namespace="own")
ref = rt.put(np.ones(2**17))
rt.get(keeper.keep.remote([ref]), timeout=60)
running = spin.remote(flag)
json.dump({"oid": ref.hex(), "task": running.hex()[:32], "pid": os.getpid()}, open(out + ".part", "w"))
os.rename(out + ".part", out)
time.sleep(3600)
"""


@rt.remote
class Keeper:
    """Borrows a driver's object (a ref inside a list is not resolved on the way in)."""

    def keep(self, refs: list[rt.ObjectRef]) -> None:
        self.refs = refs

    def read(self) -> float:
        return float(rt.get(self.refs[0], timeout=60).sum())


def _shm_files(oid: str) -> list[pathlib.Path]:
    return list(pathlib.Path("/dev/shm").glob(f"cellray-*/{oid}"))


@pytest.fixture
def start_cluster(tmp_path: pathlib.Path) -> Iterator[Callable[[int], LocalCluster]]:
    clusters: list[LocalCluster] = []

    def start(nodes: int) -> LocalCluster:
        cluster = LocalCluster([NodeSpec(num_cpus=2) for _ in range(nodes)], settings=FAST,
                               session_root=tmp_path / "s").start()
        clusters.append(cluster)
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        return cluster

    try:
        yield start
    finally:
        rt.shutdown()
        for c in clusters:
            c.stop()


@pytest.mark.parametrize("nodes", [1, 3])
def test_a_killed_driver_takes_its_running_task_and_its_borrowed_object_with_it(
        nodes: int, start_cluster: Callable[[int], LocalCluster], tmp_path: pathlib.Path,
        subprocess_env: Callable[..., dict[str, str]]) -> None:
    cluster = start_cluster(nodes)
    ids = [info["node_id"] for info in cluster.node_info]
    elsewhere = ids[-1] if nodes > 1 else ""  # the task and the actor on another node
    keeper = Keeper.options(name="keeper", namespace="own", lifetime="detached", num_cpus=0,
                            scheduling_strategy=NodeAffinitySchedulingStrategy(ids[-1], soft=False)
                            ).remote()
    out, flag = tmp_path / "out.json", tmp_path / "never"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), str(out), cluster.address,
                             str(cluster.token_file), str(flag), elsewhere], env=subprocess_env())
    try:
        wait_for(out.exists, timeout=60, what="the driver ready")
        info = json.loads(out.read_text())
        wait_for(lambda: (t := state.get_task(info["task"])) is not None and t.state == "RUNNING",
                 timeout=30, what="its task running")
        # The borrower reads it (on another node: it pulls a copy there).
        assert rt.get(keeper.read.remote(), timeout=60) == 2**17
        # Its copy in the driver's node's store, and on 3 nodes a second one where the
        # borrower pulled it: what must be freed from every store below.
        copies = _shm_files(info["oid"])
        assert len(copies) == (1 if nodes == 1 else 2), copies
        assert len({c.parent for c in copies}) == len(copies)
        total = rt.cluster_resources()["CPU"]
        wait_for(lambda: rt.available_resources().get("CPU", 0.0) == total - 1,
                 timeout=30, what="its task's CPU taken (as the nodes' rows report it)")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Its task is cancelled and its CPU free again, without the flag it waits for.
    wait_for(lambda: (t := state.get_task(info["task"])) is not None and t.state == "CANCELLED",
             timeout=30, what="the dead driver's task cancelled")
    wait_for(lambda: rt.available_resources().get("CPU", 0.0) == total,
             timeout=30, what="its worker's CPU free")
    assert not flag.exists()
    # The borrower learns that the owner died, and who it was; the bytes are gone.
    with pytest.raises(rt.exceptions.OwnerDiedError) as err:
        rt.get(keeper.read.remote(), timeout=60)
    assert info["oid"] in str(err.value) and f"driver pid {info['pid']}" in str(err.value)
    wait_for(lambda: not _shm_files(info["oid"]), timeout=30, what="the object freed from shared memory")
    assert all(c.parent.is_dir() for c in copies)  # freed from the stores, which live on
    # The detached actor itself lives on.
    assert rt.get(keeper.keep.remote([]), timeout=60) is None
    rt.kill(keeper)
    assert not os.path.exists(flag)


@rt.remote(max_retries=0)
def spin_child(flag: str) -> str:
    import time as _time
    while not os.path.exists(flag):
        _time.sleep(0.01)
    return "done"


@rt.remote(max_retries=0)
def parent(flag: str, pid_file: str) -> str:
    import time as _time
    child = spin_child.remote(flag)
    pathlib.Path(pid_file).write_text(f"{os.getpid()} {child.hex()[:32]}")
    while not os.path.exists(flag):  # not in get: the child runs in a worker of its own
        _time.sleep(0.01)
    return rt.get(child)


def test_a_worker_that_dies_takes_the_tasks_it_submitted_with_it(
        start_cluster: Callable[[int], LocalCluster], tmp_path: pathlib.Path) -> None:
    start_cluster(1)
    flag, pid_file = tmp_path / "never", tmp_path / "pid"
    ref = parent.remote(str(flag), str(pid_file))
    wait_for(pid_file.exists, timeout=60, what="the parent task running")
    pid, child = pid_file.read_text().split()
    wait_for(lambda: (t := state.get_task(child)) is not None and t.state == "RUNNING",
             timeout=30, what="the child running")
    os.kill(int(pid), signal.SIGKILL)
    with pytest.raises(rt.exceptions.WorkerCrashedError):
        rt.get(ref, timeout=60)
    # The child's owner (the parent's worker) died: the child is cancelled, its CPU freed.
    wait_for(lambda: (t := state.get_task(child)) is not None and t.state == "CANCELLED",
             timeout=30, what="the orphaned child cancelled")
    total = rt.cluster_resources()["CPU"]
    wait_for(lambda: rt.available_resources().get("CPU", 0.0) == total, timeout=30,
             what="every CPU free")
    assert not flag.exists()


PENDING_DRIVER = """
import json, os, sys, time
import runtime as rt
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy
out, address, token_file, flag, started, node, n = sys.argv[1:8]
rt.init(address=address, token_file=token_file)

@rt.remote(max_retries=0)
def spin(i, started, flag):
    open(os.path.join(started, f"spin-{i}"), "w").close()
    while not os.path.exists(flag):
        time.sleep(0.01)
    return i

@rt.remote(max_retries=0)
def after(x, started):
    open(os.path.join(started, "after"), "w").close()
    return x

if node:
    spin = spin.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
refs = [spin.remote(i, started, flag) for i in range(int(n))]
waiting = after.remote(refs[0], started)  # waits for an input that never comes
json.dump({"tasks": [r.hex()[:32] for r in refs + [waiting]], "pid": os.getpid(),
           "job": rt.get_runtime_context().get_job_id()}, open(out + ".part", "w"))
os.rename(out + ".part", out)
time.sleep(3600)
"""


@rt.remote(num_cpus=2, max_retries=0)
def both_cpus() -> str:
    return "ran"


@pytest.mark.parametrize("nodes", [1, 3])
def test_a_killed_driver_takes_its_pending_tasks_with_it_unrun(
        nodes: int, start_cluster: Callable[[int], LocalCluster], tmp_path: pathlib.Path,
        subprocess_env: Callable[..., dict[str, str]]) -> None:
    cluster = start_cluster(nodes)
    target = cluster.node_info[-1]["node_id"]  # on 3 nodes, another node than the driver's
    elsewhere = target if nodes > 1 else ""
    n = 5  # the target node has 2 CPUs: 2 run, 3 wait for one; and one waits for an input
    out, flag, started = tmp_path / "out.json", tmp_path / "never", tmp_path / "started"
    started.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(PENDING_DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), str(out), cluster.address,
                             str(cluster.token_file), str(flag), str(started), elsewhere, str(n)],
                            env=subprocess_env())
    try:
        wait_for(out.exists, timeout=60, what="the driver ready")
        info = json.loads(out.read_text())
        wait_for(lambda: len(list(started.iterdir())) == 2, timeout=60, what="two tasks started")
        wait_for(lambda: sum((t := state.get_task(tid)) is not None and t.state == "RUNNING"
                             for tid in info["tasks"]) == 2, timeout=30, what="two tasks running")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Every task of the dead driver ends CANCELLED, the running ones and those never run.
    def rows() -> list[state.TaskState]:
        return state.list_tasks(job_id=info["job"], limit=None)

    wait_for(lambda: len(rows()) == n + 1 and all(t.state == "CANCELLED" for t in rows()),
             timeout=30, what="the dead driver's tasks cancelled")
    assert {t.task_id for t in rows()} == set(info["tasks"])
    # Its workers are free again: a task that needs both CPUs of that node runs there.
    there = NodeAffinitySchedulingStrategy(target, soft=False)
    assert rt.get(both_cpus.options(scheduling_strategy=there).remote(), timeout=60) == "ran"
    # Only the two that ran before the kill ever ran; the waiting ones never started.
    ran = sorted(p.name for p in started.iterdir())
    assert len(ran) == 2 and all(name.startswith("spin-") for name in ran), ran
    assert not flag.exists()


@rt.remote(max_retries=0)
def put_and_return_nested() -> list[rt.ObjectRef]:
    import numpy as np
    return [rt.put(np.ones(2**17))]  # owned by this task's worker, borrowed by the caller


@pytest.mark.parametrize("nodes", [1, 3])
def test_a_worker_killed_while_idle_takes_the_object_it_put_with_it(
        nodes: int, start_cluster: Callable[[int], LocalCluster]) -> None:
    cluster = start_cluster(nodes)
    target = cluster.node_info[-1]["node_id"]
    outer = put_and_return_nested.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False)).remote()
    [inner] = rt.get(outer, timeout=60)
    wait_for(lambda: (t := state.get_task(outer)) is not None and t.state == "FINISHED"
             and bool(t.worker_pid), timeout=30, what="the task's row, with its worker")
    row = state.get_task(outer)
    assert row is not None and row.worker_pid is not None
    pid = row.worker_pid
    copies = _shm_files(inner.hex())
    assert len(copies) == 1, copies  # in the store of the node its worker ran on
    # Its worker is idle now (its task is over); it dies.
    os.kill(pid, signal.SIGKILL)
    # Its node sees it die and frees the object (from the store, which lives on) ...
    wait_for(lambda: not _shm_files(inner.hex()), timeout=30, what="the object freed from shared memory")
    assert copies[0].parent.is_dir()
    # ... and its borrower learns that the owner died, and who it was.
    with pytest.raises(rt.exceptions.OwnerDiedError) as err:
        rt.get(inner, timeout=60)
    assert inner.hex() in str(err.value) and f"worker pid {pid}" in str(err.value)
    # The node serves on.
    assert rt.get(put_and_return_nested.remote(), timeout=60)[0] is not None
