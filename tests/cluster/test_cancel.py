"""Cancelling tasks on real processes: queued, running, forced; never retried; every ref
of a cancelled batch resolves."""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import cloudpickle
import psutil
import pytest

import runtime as rt
from runtime.exceptions import TaskCancelledError
from runtime.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    return {"num_cpus": 2, "resources": {"slot": 1}}


@rt.remote
def pid_task() -> int:
    return os.getpid()


@rt.remote
def held(started: str, flag: Any) -> int:
    """Record that it runs (its pid, one line per attempt), then wait for ``flag``."""
    with open(started, "a") as f:
        f.write(f"{os.getpid()}\n")
    flag.wait()
    return os.getpid()


def _started(path: pathlib.Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _final_row(gcs: Any, ref: rt.ObjectRef) -> Any:
    def final() -> Any:
        row = gcs.task_row(ref)
        return row if row is not None and row.state in ("FINISHED", "FAILED", "CANCELLED") else None
    return wait_for(final, what=f"a final state for task {ref.task_id()[:12]} in the GCS")


def _worker_log_says(cluster: rt.ClusterInfo, text: str) -> bool:
    logs = pathlib.Path(cluster.session_dir) / "logs"
    return any(text in p.read_text(errors="replace") for p in logs.glob("worker-*.log"))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cancel_a_queued_task(cluster: rt.ClusterInfo, tmp_path: pathlib.Path,
                              make_flag: Callable[[str], Any]) -> None:
    flag = make_flag("release")
    slot_held = held.options(resources={"slot": 1})
    first, queued = tmp_path / "first", tmp_path / "queued"
    holder = slot_held.remote(str(first), flag)
    try:
        wait_for(lambda: _started(first), what="the task holding the slot to start")
        ref = slot_held.remote(str(queued), flag)
        rt.cancel(ref)
        with pytest.raises(TaskCancelledError, match="cancelled"):
            rt.get(ref, timeout=10)
    finally:
        flag.set()
    rt.get(holder, timeout=10)
    # The slot is free again: a later slot task runs, and the cancelled one never did.
    later = tmp_path / "later"
    rt.get(slot_held.remote(str(later), flag), timeout=10)
    assert _started(later) and not _started(queued)


def test_cancel_a_running_task(cluster: rt.ClusterInfo, gcs: Any, tmp_path: pathlib.Path,
                               make_flag: Callable[[str], Any],
                               assert_worker_serves: Callable[[int], None]) -> None:
    flag = make_flag("never")
    started = tmp_path / "started"
    ref = held.options(max_retries=3, retry_exceptions=True).remote(str(started), flag)
    try:
        (pid,) = wait_for(lambda: _started(started), what="the task to start")
        rt.cancel(ref)
        with pytest.raises(TaskCancelledError, match="cancelled while running"):
            rt.get(ref, timeout=10)
    finally:
        flag.set()
    row = _final_row(gcs, ref)
    assert row.attempt == 0 and "RETRYING" not in [h.state for h in row.history]
    assert _started(started) == [pid], "a cancelled task ran again"
    assert_worker_serves(pid)  # interrupted, not killed


def test_force_cancel_kills_the_worker_and_is_not_retried(
        cluster: rt.ClusterInfo, gcs: Any, tmp_path: pathlib.Path,
        make_flag: Callable[[str], Any], our_cluster_pids: Callable[[], dict[str, list[int]]]) -> None:
    node_pids = our_cluster_pids()["node"]
    flag = make_flag("never")
    started = tmp_path / "started"
    ref = held.options(max_retries=3).remote(str(started), flag)  # a dead worker is retried...
    try:
        (pid,) = wait_for(lambda: _started(started), what="the task to start")
        rt.cancel(ref, force=True)
        with pytest.raises(TaskCancelledError):
            rt.get(ref, timeout=10)
        wait_for(lambda: not _alive(pid), what=f"worker {pid} to be killed")
    finally:
        flag.set()
    row = _final_row(gcs, ref)  # ...but not a cancelled task
    assert row.attempt == 0 and "RETRYING" not in [h.state for h in row.history]
    assert _started(started) == [pid]
    assert our_cluster_pids()["node"] == node_pids
    assert rt.get([pid_task.remote() for _ in range(4)], timeout=10)


def test_every_ref_of_a_cancelled_batch_resolves(cluster: rt.ClusterInfo, tmp_path: pathlib.Path,
                                                 make_flag: Callable[[str], Any]) -> None:
    flag = make_flag("never")

    @rt.remote(num_returns=3)
    def three(flag: Any) -> tuple[int, int, int]:
        flag.wait()
        return 1, 2, 3

    started = tmp_path / "started"
    try:
        refs = [held.remote(str(started), flag) for _ in range(6)]  # 2 run, 4 wait for a CPU
        multi = three.remote(flag)
        wait_for(lambda: len(_started(started)) == 2, what="two tasks to start")
        # Queued ones first: cancelling a running one first would free its CPU for a
        # queued task before that task's cancel arrives.
        for ref in [multi[0], *reversed(refs)]:
            rt.cancel(ref)
        every = [*refs, *multi]
        ready, not_ready = rt.wait(every, num_returns=len(every), timeout=10)
        assert not not_ready, f"{len(not_ready)} refs of cancelled tasks never resolved"
        for ref in every:
            with pytest.raises(TaskCancelledError):
                rt.get(ref, timeout=0)
    finally:
        flag.set()
    assert len(_started(started)) == 2


def test_cancel_a_finished_task_keeps_its_value(cluster: rt.ClusterInfo) -> None:
    ref = pid_task.remote()
    value = rt.get(ref)
    rt.cancel(ref)
    rt.cancel(ref, force=True)
    assert rt.get(ref) == value
    with pytest.raises(TypeError, match="ObjectRef"):
        rt.cancel("not a ref")  # type: ignore[arg-type]


def test_cancel_a_parent_cancels_its_children(cluster: rt.ClusterInfo, tmp_path: pathlib.Path,
                                               make_flag: Callable[[str], Any]) -> None:
    flag = make_flag("never")
    child_started = tmp_path / "child"

    @rt.remote
    def parent(started: str, flag: Any) -> int:
        return rt.get(held.remote(started, flag))

    ref = parent.remote(str(child_started), flag)
    try:
        (child_pid,) = wait_for(lambda: _started(child_started), what="the child task to start")
        rt.cancel(ref, force=True)
        with pytest.raises(TaskCancelledError):
            rt.get(ref, timeout=10)
        # Force-cancelling the parent cancels the child too: its worker is killed.
        wait_for(lambda: not _alive(child_pid), what="the child's worker to be killed")
    finally:
        flag.set()


@rt.remote
def waits_on(refs: list[rt.ObjectRef], started: str) -> Any:
    with open(started, "a") as f:
        f.write(f"{os.getpid()}\n")
    return rt.get(refs[0])


def test_cancel_a_task_while_a_task_it_waits_on_runs_nested_in_its_worker(
        cluster: rt.ClusterInfo, tmp_path: pathlib.Path, make_flag: Callable[[str], Any]) -> None:
    """A blocked task's worker runs the task it waits for on its own stack; cancelling the
    blocked task must not be lost because another task is on top of its stack."""
    x_flag, c_flag = make_flag("x"), make_flag("c")
    on_slot = held.options(resources={"slot": 1})
    x_started, c_started, p_started = tmp_path / "x", tmp_path / "c", tmp_path / "p"
    x = on_slot.remote(str(x_started), x_flag)  # holds the slot (and a CPU)
    try:
        wait_for(lambda: _started(x_started), what="the slot holder to start")
        # Queued behind x for the slot; another shape than x's, so that the node cannot
        # send it ahead to x's worker: it can only run nested in p's.
        c = on_slot.options(num_cpus=0.5).remote(str(c_started), c_flag)
        p = waits_on.remote([c], str(p_started))  # runs on the other CPU, then blocks on c
        (p_pid,) = wait_for(lambda: _started(p_started), what="the waiting task to start")
        x_flag.set()
        (c_pid,) = wait_for(lambda: _started(c_started), what="the awaited task to start")
        assert c_pid == p_pid, "expected the awaited task to run nested in the blocked worker"
        rt.cancel(p)
        # The worker says when the cancel reached it (and that it waits for c to return).
        wait_for(lambda: _worker_log_says(cluster, f"cancel of task {p.task_id()[:12]} deferred"),
                 what="the worker to receive the cancel")
    finally:
        c_flag.set()
    assert rt.get(c, timeout=10) == c_pid  # not cancelled: it is not p's child
    with pytest.raises(TaskCancelledError):
        rt.get(p, timeout=10)
    rt.get(x, timeout=10)
