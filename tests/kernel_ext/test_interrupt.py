"""Interrupting any cell in a real kernel cancels the tasks that cell started (issue 15, 1).

The tasks wait for a flag file, so they are running for sure when the kernel is
interrupted (each prints "started" first, and the test interrupts once it saw all of
them); a task an earlier cell started waits on another flag and must keep running.
Nothing here sleeps to let time pass.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

pytestmark = [pytest.mark.notebooks, pytest.mark.cluster]

DEFINE = """\
import os, time
import runtime as rt
from runtime import state
from runtime.testing.wait import wait_for

@rt.remote(num_cpus=0, max_retries=0)
def square(i, flag):
    print(f"started {i}", flush=True)
    while not os.path.exists(flag):
        time.sleep(0.01)
    return i * i

def states(refs):
    return [getattr(state.get_task(r.task_id()), "state", None) for r in refs]
"""


def _interrupt_when(kernel: Any, *lines: str) -> tuple[Any, list[bool]]:
    """An ``on_message`` that interrupts the kernel once every one of ``lines`` was printed."""
    wanted = set(lines)
    seen: set[str] = set()
    interrupted: list[bool] = []

    def on_message(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            for line in msg["content"]["text"].splitlines():
                seen.update(w for w in wanted if line.endswith(w))
            if seen == wanted and not interrupted:
                interrupted.append(True)
                kernel.km.interrupt_kernel()

    return on_message, interrupted


@pytest.mark.parametrize("wait", [
    "rt.get(refs)",
    "rt.wait(refs, num_returns=4)",
    "[rt.get(r) for r in refs]",
])
def test_interrupt_cancels_the_tasks_of_the_cell_only(kernel: Any, tmp_path: pathlib.Path,
                                                       wait: str) -> None:
    never, keep_go = str(tmp_path / "never-created"), str(tmp_path / "keep-go")
    kernel.check(DEFINE)
    kernel.check(f"keep = square.remote(-1, {keep_go!r})\n"
                 "wait_for(lambda: states([keep]) == ['RUNNING'], timeout=30, what='keep runs')")
    on_message, interrupted = _interrupt_when(kernel, *(f"started {i}" for i in range(4)))
    ex = kernel.execute(f"refs = [square.remote(i, {never!r}) for i in range(4)]\n{wait}",
                        on_message=on_message)
    assert interrupted
    assert ex.error is not None and ex.error["ename"] == "KeyboardInterrupt"
    lines = [line for line in ex.stream("stdout").splitlines() if line.startswith("cellray:")]
    assert lines == ["cellray: interrupted: cancelled 4 tasks started by this cell (square x4)"], \
        ex.stream("stdout")
    # The cell's four tasks end CANCELLED; the earlier cell's task runs on, then finishes.
    kernel.check("wait_for(lambda: states(refs) == ['CANCELLED'] * 4, timeout=30,\n"
                 "         what='the interrupted cell\\'s tasks are cancelled')")
    assert kernel.check("states([keep])").result == "['RUNNING']"
    pathlib.Path(keep_go).touch()
    assert kernel.check("rt.get(keep)").result == "1"


def test_an_interrupted_cell_with_nothing_running_prints_no_line(kernel: Any, tmp_path: pathlib.Path) -> None:
    never = str(tmp_path / "never-created")
    kernel.check(DEFINE)
    kernel.check("done = rt.get(square.remote(3, '/'))")  # '/' exists: it returns at once
    on_message, interrupted = _interrupt_when(kernel, "waiting here")
    ex = kernel.execute("ref = square.remote(5, '/')\nrt.get(ref)\nprint('waiting here', flush=True)\n"
                        f"while not os.path.exists({never!r}):\n    time.sleep(0.01)",
                        on_message=on_message)
    assert interrupted
    assert ex.error is not None and ex.error["ename"] == "KeyboardInterrupt"
    assert not re.search(r"^cellray:", ex.stream("stdout"), re.MULTILINE), ex.stream("stdout")


def test_an_interrupted_remote_cell_is_counted_as_cancelled(kernel: Any, tmp_path: pathlib.Path) -> None:
    """Issue 15, 3: the task of an interrupted ``%%remote`` cell ends CANCELLED, not FAILED."""
    never = str(tmp_path / "never-created")
    kernel.check(DEFINE)
    on_message, interrupted = _interrupt_when(kernel, "looping")
    ex = kernel.execute("%%remote --name looping-cell\nimport os, time\nprint('looping', flush=True)\n"
                        f"while not os.path.exists({never!r}):\n    time.sleep(0.01)",
                        on_message=on_message)
    assert interrupted
    assert ex.error is not None and ex.error["ename"] == "KeyboardInterrupt"
    # Where users read it: the task's row, the summary by name, and the dashboard's counts.
    ex = kernel.check(
        "from widgets.model import ClusterModel\n"
        "rows = wait_for(lambda: (r := state.list_tasks(name='looping-cell')) and r[0].state != 'RUNNING'\n"
        "                and r, timeout=30, what='the interrupted cell\\'s task to end')\n"
        "model = ClusterModel()\n"
        "for t in rows:\n    model.apply(state.Change('tasks', t.task_id, t))\n"
        "counts = model.view(now=time.time()).futures.counts\n"
        "print([t.state for t in rows])\n"
        "print(state.summarize_tasks(by='name').get('looping-cell'))\n"
        "print(counts['cancelled'], counts['failed'])")
    assert ex.stream("stdout").splitlines() == ["['CANCELLED']", "{'CANCELLED': 1}", "1 0"], \
        ex.stream("stdout")
