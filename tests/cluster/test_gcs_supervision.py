"""The head supervises its GCS and its global scheduler replicas (issue 13, point 2).

Real processes, started by the ``LocalCluster`` users run: kill -9 the GCS and a new one
answers on the same address, from the same storage; kill -9 a replica and it comes back
under its name; a GCS stopped on purpose is left alone and can be restarted by hand;
stopping the cluster leaves no process. ``cellray status`` and the detached head are in
tests/cluster/test_cli.py; the restart policy, without processes, in
tests/unit/test_supervision.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import runtime as rt
from runtime import _session, state
from runtime.cluster import registry
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.cluster.process import ProcessHandle
from runtime.cluster.restarts import RESTARTS_KEY, RestartCounts
from runtime.exceptions import ClusterError
from runtime.gcs.client import GcsClient
from runtime.gcs.keys import scheduler_key
from runtime.protocol import gcs_pb2
from runtime.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

#: Seconds a restart may take on a slow, loaded CI machine ("within seconds" on a quiet one).
RESTART_TIMEOUT = 30


def gcs_call(cluster: LocalCluster, call: Callable[[GcsClient], Any]) -> Any:
    """``await call(gcs)`` with a fresh client of the cluster's GCS (2 s per call)."""
    assert cluster.token_file is not None
    token = _session.read_token(cluster.token_file)

    async def main() -> Any:
        async with GcsClient(cluster.address, token, timeout=2.0) as gcs:
            return await call(gcs)

    return asyncio.run(main())


def ping(cluster: LocalCluster) -> gcs_pb2.PingReply | None:
    """The GCS's ping reply, or None while nothing answers at the cluster's address."""
    try:
        reply: gcs_pb2.PingReply = gcs_call(cluster, lambda gcs: gcs.ping())
    except (ClusterError, TimeoutError):
        return None
    return reply


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def started(tmp_session_root: pathlib.Path) -> Iterator[Callable[..., LocalCluster]]:
    """``started(**options)``: a LocalCluster with one node, stopped at teardown, which
    then checks that none of its processes (old or restarted) is left."""
    clusters: list[LocalCluster] = []

    def start(**options: Any) -> LocalCluster:
        cluster = LocalCluster([NodeSpec(num_cpus=1)], session_root=tmp_session_root, **options)
        clusters.append(cluster.start())
        return cluster

    try:
        yield start
    finally:
        for cluster in clusters:
            seen = [p.pid for p in psutil.Process().children(recursive=True)]
            cluster.stop()
            left = [p for p in seen if alive(p)]
            assert not left, f"processes left after stop(): {left}"


def test_a_killed_gcs_comes_back_on_its_address_from_its_storage(
        started: Callable[..., LocalCluster]) -> None:
    cluster = started()
    assert cluster.session_dir is not None
    before = ping(cluster)
    assert before is not None and before.storage.startswith("sqlite:///")
    old = cluster.gcs_pid
    assert old == before.pid == registry.read(cluster.session_dir).head  # type: ignore[union-attr]
    assert json.loads((cluster.session_dir / "gcs.ready").read_text())["pid"] == old

    os.kill(old, signal.SIGKILL)
    after = wait_for(lambda: (p := ping(cluster)) is not None and p.pid != old and p,
                     timeout=RESTART_TIMEOUT, what="a new GCS answering on the same address")
    assert after.cluster_id == before.cluster_id, "a GCS back from sqlite is the same cluster"
    assert after.storage == before.storage
    assert after.pid == cluster.gcs_pid == registry.read(cluster.session_dir).head  # type: ignore[union-attr]
    assert json.loads((cluster.session_dir / "gcs.ready").read_text())["pid"] == after.pid
    wait_for(lambda: RestartCounts.decode(gcs_call(cluster, lambda gcs: gcs.get_entry("kv", RESTARTS_KEY)))
             .gcs == 1, timeout=RESTART_TIMEOUT, what="the GCS to hold the restart count")
    assert cluster.restarts.gcs == 1
    log = (cluster.session_dir / "logs" / "supervisor.log").read_text()
    assert f"the GCS (pid {old}) was killed by SIGKILL; restarting it on {cluster.address}" in log
    assert f"the GCS is back on {cluster.address} as pid {after.pid}" in log


def test_with_memory_storage_the_gcs_comes_back_as_a_new_cluster(
        started: Callable[..., LocalCluster]) -> None:
    cluster = started(gcs_storage="memory")
    before = ping(cluster)
    assert before is not None and before.storage == "memory" and cluster.storage == "memory"
    os.kill(before.pid, signal.SIGKILL)
    after = wait_for(lambda: (p := ping(cluster)) is not None and p.pid != before.pid and p,
                     timeout=RESTART_TIMEOUT, what="a new GCS answering on the same address")
    assert after.cluster_id != before.cluster_id and after.storage == "memory"


def test_a_killed_scheduler_replica_comes_back_under_its_name(
        started: Callable[..., LocalCluster]) -> None:
    cluster = started()
    assert [info["name"] for info in cluster.scheduler_info] == ["gs-0", "gs-1"]
    old = cluster.schedulers[0]
    os.kill(old.pid, signal.SIGKILL)
    wait_for(lambda: cluster.restarts.schedulers.get("gs-0") == 1, timeout=RESTART_TIMEOUT,
             what="gs-0 restarted and ready")
    new = cluster.schedulers[0]
    assert new.pid != old.pid and new.name == "gs-0" and new.alive()
    assert "--name" in (cmd := psutil.Process(new.pid).cmdline()) and cmd[cmd.index("--name") + 1] == "gs-0"
    address = cluster.scheduler_info[0]["address"]
    wait_for(lambda: gcs_call(cluster, lambda gcs: gcs.get_entry("kv", scheduler_key("gs-0")))
             == address.encode(), timeout=RESTART_TIMEOUT, what="gs-0 registered at its new address")
    assert cluster.schedulers[1].alive() and cluster.restarts.gcs == 0
    assert registry.read(cluster.session_dir).schedulers == [new.pid, cluster.schedulers[1].pid]  # type: ignore[arg-type, union-attr]


def test_a_gcs_stopped_on_purpose_is_left_alone_and_restarts_by_hand_from_its_storage(
        started: Callable[..., LocalCluster], tmp_path: pathlib.Path) -> None:
    db = tmp_path / "gcs.db"
    cluster = started(gcs_storage=f"sqlite://{db}")
    assert cluster.session_dir is not None and cluster.token_file is not None
    before = ping(cluster)
    assert before is not None and before.storage == f"sqlite://{db}"
    os.kill(before.pid, signal.SIGTERM)
    wait_for(lambda: "gcs" in cluster.restarts.not_restarted, timeout=RESTART_TIMEOUT,
             what="the supervisor to leave the stopped GCS alone")
    assert "asked to stop" in cluster.restarts.not_restarted["gcs"] and ping(cluster) is None

    port = cluster.address.rpartition(":")[2]
    by_hand = ProcessHandle("gcs-by-hand", "runtime.gcs",
                            ["--host", "127.0.0.1", "--port", port, "--gcs-storage", f"sqlite://{db}",
                             "--session-dir", str(cluster.session_dir),
                             "--token-file", str(cluster.token_file)],
                            cluster.session_dir / "logs" / "gcs-by-hand.log",
                            cluster.session_dir / "gcs-by-hand.ready")
    try:
        by_hand.wait_ready(RESTART_TIMEOUT)
        # Polled: this process's channels to the address may still be in gRPC's reconnect backoff.
        after = wait_for(lambda: (p := ping(cluster)) is not None and p, timeout=RESTART_TIMEOUT,
                         what="the GCS started by hand to answer")
        assert after.pid == by_hand.pid and after.cluster_id == before.cluster_id
    finally:
        # A clean stop (exit 0); its grace is generous: on a loaded CI machine a stop that
        # overlaps a node's re-registration has taken over the default 5 s once.
        assert by_hand.stop(grace=30) == 0


def test_the_driver_sees_the_storage_and_the_restarts_in_rt_state(tmp_session_root: pathlib.Path) -> None:
    cluster = LocalCluster([NodeSpec(num_cpus=1)], session_root=tmp_session_root).start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        head = state.get_head()
        assert head.address == cluster.address and head.gcs_pid == cluster.gcs_pid
        assert head.storage == cluster.storage and head.durable and head.gcs_restarts == 0
        assert head.summary() == f"storage {cluster.storage} · GCS restarts 0"
        os.kill(head.gcs_pid, signal.SIGKILL)

        def restarted() -> state.HeadState | None:
            try:
                now = state.get_head(timeout=2.0)
            except (ClusterError, TimeoutError):
                return None  # the GCS is away for a moment
            return now if now.gcs_restarts == 1 else None

        now = wait_for(restarted, timeout=RESTART_TIMEOUT, what="get_head() to count one restart")
        assert now.gcs_pid != head.gcs_pid and now.cluster_id == head.cluster_id
        assert rt.get(rt.remote(lambda: 6 * 7).remote(), timeout=60) == 42
    finally:
        rt.shutdown()
        cluster.stop()


def test_init_takes_the_storage_and_refuses_a_bad_one(tmp_session_root: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'nosuch'"):
        LocalCluster([], session_root=tmp_session_root, gcs_storage="nosuch://x")
    with pytest.raises(ValueError, match="applies to a cluster that init\\(\\) starts"):
        rt.init(address="127.0.0.1:1", gcs_storage="memory")
    assert not rt.is_initialized()


@pytest.mark.parametrize("storage", ["sqlite", "memory"])
def test_init_starts_a_cluster_on_the_storage_it_is_given_and_rt_state_shows_it(storage: str) -> None:
    info = rt.init(num_cpus=1, gcs_storage=storage)
    try:
        head = rt.state.get_head()
        session = pathlib.Path(info.session_dir)
        assert pathlib.Path(head.session_dir) == session
        if storage == "sqlite":  # SQLite in the session directory
            assert head.storage == f"sqlite://{session / 'gcs.db'}" and head.durable, head
            assert (session / "gcs.db").is_file()
        else:
            assert head.storage == "memory" and not head.durable, head
            assert not (session / "gcs.db").exists()
        assert head.summary() == f"storage {head.storage} · GCS restarts 0"
        assert rt.get(rt.remote(lambda: 6 * 7).remote(), timeout=60) == 42
        seen = [p.pid for p in psutil.Process().children(recursive=True)]
    finally:
        rt.shutdown()
    assert not [p for p in seen if alive(p)], "processes left after shutdown()"
