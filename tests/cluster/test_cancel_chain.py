"""Cancelling a task cancels the chain of tasks blocked in ``get`` on it, also on one CPU,
where they run nested in one worker (issue 14, point 7)."""

from __future__ import annotations

import pathlib
import time

import pytest

import runtime as rt
from runtime import state
from runtime.testing.wait import wait_for

pytestmark = pytest.mark.cluster


@rt.remote
def innermost(started: str) -> None:
    pathlib.Path(started).touch()
    while True:
        time.sleep(0.01)


@rt.remote
def middle(started: str) -> None:
    rt.get(innermost.remote(started))


@rt.remote
def outer(started: str) -> None:
    rt.get(middle.remote(started))


@rt.remote
def ok() -> int:
    return 1


def test_cancelling_the_outer_task_ends_the_whole_chain_on_one_cpu(tmp_path: pathlib.Path) -> None:
    rt.init(num_cpus=1)
    try:
        started = tmp_path / "started"
        ref = outer.remote(str(started))
        wait_for(started.exists, timeout=60, what="the innermost task running")
        rt.cancel(ref)
        with pytest.raises(rt.exceptions.TaskCancelledError):
            rt.get(ref, timeout=60)
        # Nothing of the chain is left running, and the one CPU serves new work.
        wait_for(lambda: not state.list_tasks(state="RUNNING"), timeout=30, what="no task running")
        assert rt.get(ok.remote(), timeout=60) == 1
    finally:
        rt.shutdown()
