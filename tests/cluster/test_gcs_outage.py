"""GCS outages (issue 13, points 3-6): kill -9 the GCS under load, and start it again.

With durable storage (SQLite), the head's supervisor told not to restart it, and the GCS
started again by hand on the same port: tasks that were running finish, actor calls made
during the outage succeed, a new task of a function the node's workers know runs during
the outage, and what needs the GCS (a new function, a new actor, a named lookup) waits
for it and completes once it is back. Every task and call runs once (they append to a
log the test counts), the nodes keep their ids, the global scheduler replicas survive, a
node killed during the outage is declared dead after it, and the driver is told once
that it waits for the GCS. A call that needs the GCS fails after ``gcs_outage_timeout_s``
with an error that says why.

With in-memory storage a restarted GCS (restarted by the head's supervisor) is a new
cluster: the nodes and replicas exit cleanly with one line in their logs saying why, and
the driver gets an error that says so and how to keep a cluster through GCS restarts.

Real processes throughout; tasks hold on flag files, and the test waits on state.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import psutil
import pytest

import runtime as rt
from runtime import config
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.cluster.process import ProcessHandle
from runtime.cluster.restarts import RestartPolicy
from runtime.exceptions import ConnectionLostError
from runtime.gcs.reconnect import RECONNECTING
from runtime.testing.wait import wait_for
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.cluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = config.load(heartbeat_ms=100, node_timeout_ms=2000, gcs_outage_timeout_s=60)
#: The head leaves a dead GCS dead: the test starts it again by hand, when it chooses.
NO_RESTARTS = RestartPolicy(max_restarts=0)


def _note(log: str, line: str) -> None:
    with open(log, "a") as f:  # one short append per line: lines of concurrent tasks never mix
        f.write(line + "\n")


def _work(i: int, log: str, flag: Any = None, barrier: str = "", n: int = 0) -> int:
    """Task ``i``: logs that it ran; meets ``n`` others at ``barrier``; holds until ``flag``."""
    _note(log, f"f {i}")
    if barrier:
        pathlib.Path(barrier, str(os.getpid())).touch()
        deadline = time.monotonic() + 60
        while len(os.listdir(barrier)) < n and time.monotonic() < deadline:
            time.sleep(0.01)
    if flag is not None:
        flag.wait()
    return i * 2


def _new(log: str) -> str:
    _note(log, "new")
    return "new"


class Counted:
    """An actor whose calls log themselves."""

    def __init__(self, log: str) -> None:
        self.log, self.n = log, 0

    def incr(self) -> int:
        self.n += 1
        _note(self.log, f"incr {self.n}")
        return self.n


def _lines(log: pathlib.Path) -> list[str]:
    return log.read_text().splitlines()


class GcsByHand:
    """The GCS started again by hand: the cluster's port, storage, session and settings."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.handle: ProcessHandle | None = None

    def start(self) -> None:
        c, s = self.cluster, self.cluster.settings
        assert c.session_dir is not None and c.token_file is not None
        host, port = c.address.rsplit(":", 1)
        args = ["--host", host, "--port", port, "--num-shards", str(s.gcs_shards),
                "--heartbeat-ms", str(s.heartbeat_ms), "--node-timeout-ms", str(s.node_timeout_ms),
                "--gcs-storage", c.storage, "--session-dir", str(c.session_dir),
                "--token-file", str(c.token_file), "--parent-pid", str(os.getpid())]
        ready = c.session_dir / "gcs-by-hand.ready"
        ready.unlink(missing_ok=True)
        self.handle = ProcessHandle("gcs", "runtime.gcs", args, c.session_dir / "logs" / "gcs.log", ready,
                                    env={**os.environ, **s.to_env()})
        self.handle.wait_ready(s.start_timeout_s)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()


def _kill(handle: ProcessHandle) -> None:
    """kill -9 the process and its group (a node's workers), and reap it."""
    os.killpg(handle.pid, signal.SIGKILL)
    handle.popen.wait()


@pytest.fixture
def durable(tmp_path: pathlib.Path) -> Iterator[tuple[LocalCluster, GcsByHand]]:
    """Node 0 runs the work; node 1 (no CPUs) is there to be killed during the outage."""
    cluster = LocalCluster([NodeSpec(num_cpus=2), NodeSpec(num_cpus=0)], settings=FAST,
                           session_root=tmp_path / "s", gcs_storage="sqlite",
                           restart_policy=NO_RESTARTS).start()
    by_hand = GcsByHand(cluster)
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file), _settings=FAST)
        yield cluster, by_hand
    finally:
        if cluster.head is not None and not cluster.head.alive() and by_hand.handle is None:
            by_hand.start()  # a test that failed during the outage: let the driver say goodbye
        rt.shutdown()
        cluster.stop()
        by_hand.stop()


def test_work_goes_on_through_a_gcs_restart_and_nothing_runs_twice(
        durable: tuple[LocalCluster, GcsByHand], tmp_path: pathlib.Path,
        make_flag: Callable[[str], Any], capfd: pytest.CaptureFixture[str]) -> None:
    cluster, by_hand = durable
    home, victim = cluster.node_info[0]["node_id"], cluster.node_info[1]["node_id"]
    log = tmp_path / "runs.log"
    log.touch()
    here = NodeAffinitySchedulingStrategy(home, soft=False)
    f = rt.remote(num_cpus=1, max_retries=3)(_work).options(scheduling_strategy=here)
    counter = rt.remote(Counted).options(scheduling_strategy=here)
    actor = counter.remote(str(log))
    keeper = counter.options(name="keeper").remote(str(log))
    assert rt.get([actor.incr.remote(), keeper.incr.remote()], timeout=60) == [1, 1]
    # Both CPU workers of node 0 run f at once: each has f, and either may take the next one.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    assert rt.get([f.remote(i, str(log), None, str(barrier), 2) for i in (0, 1)], timeout=60) == [0, 2]
    hold = make_flag("hold")
    running = f.remote(2, str(log), hold)
    wait_for(lambda: "f 2" in _lines(log), timeout=60, what="task 2 running")
    replicas = [s.pid for s in cluster.schedulers]
    capfd.readouterr()

    assert cluster.head is not None
    _kill(cluster.head)
    _kill(cluster.nodes[1])  # a node that dies during the outage
    # What needs no GCS goes on: a call to an existing actor, a task of a function node 0 knows.
    assert rt.get(actor.incr.remote(), timeout=60) == 2
    assert rt.get(f.remote(3, str(log)), timeout=60) == 6
    # What needs the GCS waits for it: a new function, a new actor, a named lookup.
    pool = concurrent.futures.ThreadPoolExecutor(3)
    try:
        new_task = pool.submit(lambda: rt.get(rt.remote(_new).remote(str(log)), timeout=120))
        new_actor = pool.submit(lambda: rt.get(counter.remote(str(log)).incr.remote(), timeout=120))
        by_name = pool.submit(lambda: rt.get(rt.get_actor("keeper").incr.remote(), timeout=120))
        told = wait_for(lambda: (err := capfd.readouterr().err) and "reconnecting" in err and err,
                        timeout=60, what="the driver to say that it waits for the GCS")
        assert not (new_task.done() or new_actor.done() or by_name.done()), \
            [fut.exception() for fut in (new_task, new_actor, by_name) if fut.done()]
        away = rt.state.gcs_outage()  # what the dashboard shows as "GCS reconnecting…"
        assert away is not None and away >= 0
        hold.set()  # a task that was running when the GCS died finishes during the outage
        assert rt.get(running, timeout=60) == 4
        assert cluster.head.popen.poll() is not None, "the head restarted the GCS: it was told not to"

        by_hand.start()
        assert new_task.result(timeout=120) == "new"
        assert new_actor.result(timeout=120) == 1
        assert by_name.result(timeout=120) == 2
        assert rt.state.gcs_outage() is None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    told += capfd.readouterr().err
    said = [line for line in told.splitlines() if line.startswith((RECONNECTING, "cellray: the GCS"))]
    assert len(said) == 2 and said[0].startswith(RECONNECTING) and "is back after" in said[1], told

    # Everything ran once, and the cluster goes on as before.
    assert rt.get([f.remote(i, str(log)) for i in range(4, 8)], timeout=60) == [8, 10, 12, 14]
    assert rt.get(actor.incr.remote(), timeout=60) == 3
    lines = Counter(_lines(log))
    assert {line: n for line, n in lines.items() if n != 1} == {"incr 1": 3, "incr 2": 2}, lines
    assert sum(1 for line in lines if line.startswith("f ")) == 8
    nodes = {n["NodeID"]: n["Alive"] for n in rt.nodes()}
    assert nodes.get(home) is True, nodes  # the same id: it never left
    wait_for(lambda: {n["NodeID"]: n["Alive"] for n in rt.nodes()}.get(victim) is False, timeout=60,
             what="the node killed during the outage declared dead")
    assert {n["NodeID"]: n["Alive"] for n in rt.nodes()} == {home: True, victim: False}  # no new ids
    assert [s.pid for s in cluster.schedulers] == replicas and all(s.alive() for s in cluster.schedulers)


def _where(tag: str) -> tuple[str, str]:
    return tag, rt.get_runtime_context().get_node_id()


def _listening(pid: int) -> bool:
    """Whether the process listens on a TCP port (a node serves before it registers)."""
    try:
        return any(c.status == psutil.CONN_LISTEN for c in psutil.Process(pid).net_connections("tcp"))
    except psutil.NoSuchProcess:
        return False


def test_a_node_started_during_the_outage_waits_for_the_gcs_and_joins_when_it_is_back(
        durable: tuple[LocalCluster, GcsByHand]) -> None:
    cluster, by_hand = durable
    before = {n["NodeID"] for n in rt.nodes()}
    assert cluster.head is not None
    _kill(cluster.head)
    late = cluster.add_node(NodeSpec(num_cpus=1, resources={"late": 1}), wait=False)
    # It serves, then registers with the GCS: it waits for it (no ready file), and does not give up.
    wait_for(lambda: _listening(late.pid) or not late.alive(), timeout=60,
             what="the new node serving, before it registers")
    assert late.alive(), late.log_path.read_text()
    assert late.poll_ready() is None, "the node says it is ready, though no GCS could register it"

    by_hand.start()
    info = late.wait_ready(60)  # registered once the GCS is back
    cluster.node_info.append(info)
    new = info["node_id"]
    assert new not in before
    wait_for(lambda: {n["NodeID"]: n["Alive"] for n in rt.nodes()}.get(new) is True, timeout=60,
             what="the GCS to list the node that joined")
    where = rt.remote(_where)
    pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(new, soft=False))
    assert rt.get(pinned.remote("pinned"), timeout=60) == ("pinned", new)
    assert rt.get(where.options(resources={"late": 1}).remote("late"), timeout=60) == ("late", new)


def test_a_call_that_needs_the_gcs_fails_clearly_after_the_outage_timeout(tmp_path: pathlib.Path) -> None:
    settings = FAST.override(gcs_outage_timeout_s=1.0)
    cluster = LocalCluster([NodeSpec(num_cpus=1)], settings=settings, session_root=tmp_path / "s",
                           gcs_storage="sqlite", restart_policy=NO_RESTARTS).start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file), _settings=settings)
        counted = rt.remote(num_cpus=0)(Counted)
        actor = counted.remote(str(tmp_path / "log"))
        named = counted.options(name="keeper").remote(str(tmp_path / "log"))
        assert rt.get([actor.incr.remote(), named.incr.remote()], timeout=60) == [1, 1]
        assert cluster.head is not None
        _kill(cluster.head)
        why = r"unreachable for .*gcs_outage_timeout_s = 1 s"
        with pytest.raises(ConnectionLostError, match=why):  # a new function
            rt.remote(_new).remote(str(tmp_path / "log"))
        # A new actor: its worker cannot load its class; it dies of that, not of its constructor.
        with pytest.raises(rt.exceptions.ActorDiedError, match="it could not be created") as died:
            rt.get(counted.remote(str(tmp_path / "log")).incr.remote(), timeout=60)
        assert "constructor raised" not in str(died.value), died.value
        assert isinstance(died.value.__cause__, ConnectionLostError), died.value.__cause__
        assert re.search(why, str(died.value.__cause__)), died.value.__cause__
        with pytest.raises(ConnectionLostError, match=why):  # a named-actor lookup
            rt.get_actor("keeper")
        assert rt.get(actor.incr.remote(), timeout=60) == 2  # what needs no GCS goes on
        assert rt.get(named.incr.remote(), timeout=60) == 2  # a handle held already, too
    finally:
        rt.shutdown()
        cluster.stop()


def test_a_gcs_restarted_without_storage_is_a_new_cluster_nodes_leave_and_the_driver_says_why(
        tmp_path: pathlib.Path, make_flag: Callable[[str], Any]) -> None:
    cluster = LocalCluster([NodeSpec(num_cpus=1)], settings=FAST, session_root=tmp_path / "s",
                           gcs_storage="memory").start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        log = tmp_path / "runs.log"
        log.touch()
        held = rt.remote(num_cpus=1)(_work).remote(0, str(log), make_flag("never"))
        wait_for(lambda: _lines(log), timeout=60, what="the task running")
        node, replicas = cluster.nodes[0], list(cluster.schedulers)
        assert cluster.head is not None
        _kill(cluster.head)  # the head's supervisor starts it again: empty, a new cluster
        why = r"restarted without persistent storage .*new, empty cluster.*--gcs-storage sqlite"
        with pytest.raises(ConnectionLostError, match=why):
            rt.get(held, timeout=60)
        with pytest.raises(ConnectionLostError, match=why):
            rt.remote(_new).remote(str(log))
        wait_for(lambda: node.popen.poll() is not None and all(not s.alive() for s in replicas),
                 timeout=60, what="the node and the replicas of the old cluster gone")
        assert node.popen.returncode == 0 and all(s.popen.returncode == 0 for s in replicas)
        said = [line for line in node.log_path.read_text().splitlines()
                if "restarted without persistent storage" in line]
        assert len(said) == 1 and "leaves" in said[0], said
    finally:
        rt.shutdown()
        cluster.stop()


class _Pid:
    def pid(self) -> int:
        return os.getpid()


def test_a_detached_actor_killed_during_the_outage_restarts(
        durable: tuple[LocalCluster, GcsByHand]) -> None:
    cluster, by_hand = durable
    here = NodeAffinitySchedulingStrategy(cluster.node_info[0]["node_id"], soft=False)
    actor = rt.remote(_Pid).options(name="lasting", namespace="outage", lifetime="detached",
                                    max_restarts=1, scheduling_strategy=here).remote()
    old = rt.get(actor.pid.remote(), timeout=60)
    assert cluster.head is not None
    _kill(cluster.head)
    os.kill(old, signal.SIGKILL)  # the actor dies while the GCS is away
    by_hand.start()
    # It restarts (its class comes from the GCS once it is back) and answers under its name.
    again = wait_for(lambda: _pid_of("lasting", "outage"), timeout=120, what="the actor back")
    assert again != old
    rt.kill(rt.get_actor("lasting", namespace="outage"))


def _pid_of(name: str, namespace: str) -> int | None:
    try:
        return int(rt.get(rt.get_actor(name, namespace=namespace).pid.remote(), timeout=10))
    except (rt.exceptions.ActorDiedError, rt.exceptions.GetTimeoutError):
        return None  # a call that reached the dead instance; the next one goes to the new
