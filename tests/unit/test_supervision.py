"""The head's restart policy and its supervisor, without processes: a fake head, a fake clock.

The real thing (kill -9 of a real GCS and replica) is tests/cluster/test_gcs_supervision.py.
"""

from __future__ import annotations

import itertools
import pathlib
from types import SimpleNamespace
from typing import Any

import pytest

from runtime import config
from runtime.cluster.restarts import (
    EXIT_STORAGE_LOST,
    GCS_LEAVE_CODES,
    GiveUp,
    Leave,
    Restart,
    RestartBudget,
    RestartCounts,
    RestartPolicy,
)
from runtime.cluster.supervision import Supervisor, describe_exit, read_status

POLICY = RestartPolicy(backoff_s=0.5, backoff_max_s=2.0, max_restarts=4, window_s=60.0)


def test_the_first_restart_is_immediate_then_the_waits_double_up_to_the_cap() -> None:
    budget = RestartBudget(POLICY)
    assert [budget.on_exit(now=t, code=-9) for t in (0.0, 1.0, 2.0, 3.0)] == [
        Restart(0.0, 1), Restart(0.5, 2), Restart(1.0, 3), Restart(2.0, 4)]
    assert budget.on_exit(now=4.0, code=1) == GiveUp(
        "it exited 5 times within 60 s (at most 4 restarts in 60 s)")
    assert budget.total == 4


def test_restarts_older_than_the_window_no_longer_count() -> None:
    budget = RestartBudget(POLICY)
    for t in (0.0, 1.0, 2.0, 3.0):
        budget.on_exit(now=t, code=-9)
    assert budget.on_exit(now=60.5, code=-9) == Restart(2.0, 4)  # the one at 0.0 left the window
    assert budget.on_exit(now=200.0, code=-9) == Restart(0.0, 1)  # a quiet minute: fresh start


def test_a_process_asked_to_stop_or_a_gcs_without_storage_is_left_stopped() -> None:
    gcs = RestartBudget(POLICY, GCS_LEAVE_CODES)
    assert gcs.on_exit(now=0.0, code=0) == Leave("it was asked to stop (exit code 0)")
    left = gcs.on_exit(now=0.0, code=EXIT_STORAGE_LOST)
    assert isinstance(left, Leave) and "storage stayed unreachable" in left.reason
    assert gcs.total == 0
    replica = RestartBudget(POLICY)
    assert isinstance(replica.on_exit(now=0.0, code=0), Leave)
    assert replica.on_exit(now=0.0, code=EXIT_STORAGE_LOST) == Restart(0.0, 1)


def test_the_exit_code_of_a_gcs_without_storage_is_the_gcs_s() -> None:
    from runtime.gcs.__main__ import EXIT_STORAGE_LOST as gcs_code
    assert gcs_code == EXIT_STORAGE_LOST


def test_a_policy_that_cannot_work_is_refused() -> None:
    with pytest.raises(ValueError, match="backoff_s <= backoff_max_s"):
        RestartPolicy(backoff_s=5.0, backoff_max_s=1.0)
    with pytest.raises(ValueError, match="max_restarts >= 0"):
        RestartPolicy(max_restarts=-1)


def test_exits_are_described_for_people() -> None:
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-200) == "was killed by signal 200"


# ---- the supervisor, on a fake head ----

_pids = itertools.count(1000)


class FakeProcess:
    """What the supervisor reads of a ProcessHandle: pid, exit code, ready file, stop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = next(_pids)
        self.popen = SimpleNamespace(returncode=None)
        self.popen.poll = lambda: self.popen.returncode
        self.ready: dict[str, Any] | None = None
        self.log_path = pathlib.Path(f"/logs/{name}.log")

    def poll_ready(self) -> dict[str, Any] | None:
        return self.ready

    def comes_up(self) -> None:
        self.ready = {"pid": self.pid, "port": 6380, "name": self.name,
                      "storage": "sqlite:///s/gcs.db", "cluster_id": "c1"}

    def dies(self, code: int = -9) -> None:
        self.popen.returncode = code

    def stop(self, grace: float = 5.0) -> int:
        if self.popen.returncode is None:
            self.popen.returncode = -15
        return int(self.popen.returncode)


class FakeHead:
    """The parts of ``Head`` the supervisor uses; spawns FakeProcesses."""

    def __init__(self, session_dir: pathlib.Path) -> None:
        (session_dir / "logs").mkdir(parents=True)
        self.options = SimpleNamespace(session_dir=session_dir,
                                       settings=config.Settings(start_timeout_s=30.0))
        self.address = "127.0.0.1:6380"
        self.gcs = FakeProcess("gcs")
        self.schedulers = {"gs-0": FakeProcess("gs-0"), "gs-1": FakeProcess("gs-1")}
        self.scheduler_info: dict[str, Any] = {}
        self.spawned: list[str] = []
        self.records = 0

    def spawn_gcs(self) -> FakeProcess:
        self.gcs = FakeProcess("gcs")
        self.spawned.append("gcs")
        return self.gcs

    def spawn_scheduler(self, name: str) -> FakeProcess:
        self.schedulers[name] = FakeProcess(name)
        self.spawned.append(name)
        return self.schedulers[name]

    def gcs_ready(self, info: dict[str, Any]) -> None:
        self.gcs_info = info

    def record(self) -> None:
        self.records += 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def head(tmp_path: pathlib.Path) -> FakeHead:
    return FakeHead(tmp_path / "session")


def supervise(head: FakeHead, clock: Clock, published: list[RestartCounts]) -> Supervisor:
    def publish(counts: RestartCounts) -> None:
        published.append(RestartCounts.decode(counts.encode()))
    return Supervisor(head, "token", policy=POLICY, clock=clock, publish=publish)  # type: ignore[arg-type]


def log_of(head: FakeHead) -> str:
    return (head.options.session_dir / "logs" / "supervisor.log").read_text()


def test_a_killed_gcs_is_started_again_and_counted_once_it_serves(head: FakeHead) -> None:
    clock, published = Clock(), []
    sup = supervise(head, clock, published)
    sup.check()
    assert head.spawned == []                      # all running: nothing to do
    old = head.gcs
    old.dies(-9)
    sup.check()
    assert head.spawned == ["gcs"] and head.gcs is not old   # at once, the first time
    assert sup.counts.gcs == 0                     # not serving yet
    sup.check()
    assert head.spawned == ["gcs"]                 # starting: no second copy
    clock.now += 0.8
    head.gcs.comes_up()
    sup.check()
    assert sup.counts.gcs == 1 and head.gcs_info["pid"] == head.gcs.pid
    assert [c.gcs for c in published] == [1] and head.records == 1
    log = log_of(head)
    assert f"the GCS (pid {old.pid}) was killed by SIGKILL; restarting it on 127.0.0.1:6380" in log
    assert (f"the GCS is back on 127.0.0.1:6380 as pid {head.gcs.pid}, 0.8 s after it died "
            "(storage sqlite:///s/gcs.db, cluster id c1)") in log
    status = read_status(head.options.session_dir)
    assert status is not None and status["gcs"] == 1


def test_a_replica_waits_for_the_gcs_and_comes_back_under_its_name(head: FakeHead) -> None:
    clock, published = Clock(), []
    sup = supervise(head, clock, published)
    head.gcs.dies(-9)
    head.schedulers["gs-1"].dies(1)
    sup.check()
    assert head.spawned == ["gcs"]                 # the replica needs a GCS to start against
    sup.check()
    assert head.spawned == ["gcs"]
    head.gcs.comes_up()
    sup.check()
    assert head.spawned == ["gcs", "gs-1"]
    head.schedulers["gs-1"].comes_up()
    sup.check()
    assert sup.counts.schedulers == {"gs-1": 1} and head.scheduler_info["gs-1"]["name"] == "gs-1"
    assert published[-1].schedulers == {"gs-1": 1}
    assert "global scheduler gs-1 (pid" in log_of(head) and "exited with code 1" in log_of(head)


def test_restarts_back_off_and_stop_when_the_process_keeps_dying(head: FakeHead) -> None:
    clock, published = Clock(), []
    sup = supervise(head, clock, published)
    for _ in range(POLICY.max_restarts):
        head.gcs.dies(1)
        sup.check()                                # exit seen: restart now or after a backoff
        while head.gcs.popen.returncode is not None:
            clock.now += 0.25
            sup.check()
    assert head.spawned == ["gcs"] * POLICY.max_restarts
    head.gcs.dies(1)
    sup.check()
    clock.now += 100.0
    sup.check()
    assert head.spawned == ["gcs"] * POLICY.max_restarts   # given up: never again
    assert "it exited 5 times within 60 s" in sup.counts.not_restarted["gcs"]
    assert "the GCS (pid" in log_of(head) and "the head gives up on it" in log_of(head)
    status = read_status(head.options.session_dir)
    assert status is not None and "gcs" in status["not_restarted"]


def test_a_gcs_asked_to_stop_is_left_stopped(head: FakeHead) -> None:
    clock, published = Clock(), []
    sup = supervise(head, clock, published)
    head.gcs.dies(0)
    sup.check()
    clock.now += 10
    sup.check()
    assert head.spawned == [] and "asked to stop" in sup.counts.not_restarted["gcs"]
    assert "the head leaves it stopped" in log_of(head)


def test_a_restart_that_never_gets_ready_is_stopped_and_counted_as_an_exit(head: FakeHead) -> None:
    clock, published = Clock(), []
    sup = supervise(head, clock, published)
    head.gcs.dies(-9)
    sup.check()
    hung = head.gcs
    clock.now += head.options.settings.start_timeout_s + 1
    sup.check()
    assert hung.popen.returncode == -15            # stopped by the supervisor
    assert "was not ready 30 s after its restart" in log_of(head)
    clock.now += POLICY.backoff_s
    sup.check()
    assert head.spawned == ["gcs", "gcs"]


def test_after_stop_nothing_is_restarted(head: FakeHead) -> None:
    clock, published = Clock(), []
    sup = supervise(head, clock, published)
    head.gcs.dies(-9)
    sup.stop()
    sup.check()
    assert head.spawned == []
