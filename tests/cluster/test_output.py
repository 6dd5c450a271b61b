"""Worker output on real processes: prints reach the driver while the task runs,
prefixed with the task's name and the worker's pid."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest

import runtime as rt
from runtime.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Captured:
    """Everything printed so far (``capfd.readouterr`` consumes, so this accumulates)."""

    def __init__(self, capfd: pytest.CaptureFixture[str]) -> None:
        self._capfd = capfd
        self.out = ""
        self.err = ""

    def read(self) -> Captured:
        got = self._capfd.readouterr()
        self.out += got.out
        self.err += got.err
        return self

    def wait_out(self, text: str) -> None:
        wait_for(lambda: text in self.read().out, what=f"{text!r} on the driver's stdout")

    def wait_err(self, text: str) -> None:
        wait_for(lambda: text in self.read().err, what=f"{text!r} on the driver's stderr")


@pytest.fixture
def captured(cluster: rt.ClusterInfo, capfd: pytest.CaptureFixture[str]) -> Captured:
    return Captured(capfd)


def f(flag: Any) -> int:
    print("first line")
    flag.wait()  # the test sets it only once it has seen the first line
    print("second line")
    return os.getpid()


remote_f = rt.remote(f)


def test_prints_stream_to_the_driver_as_they_happen(captured: Captured,
                                                     make_flag: Callable[[str], Any]) -> None:
    flag = make_flag("saw-first-line")
    ref = remote_f.remote(flag)
    try:
        captured.wait_out("first line")
        assert "second line" not in captured.out
    finally:
        flag.set()
    pid = rt.get(ref, timeout=30)
    captured.wait_out("second line")
    lines = [line for line in captured.out.splitlines() if "line" in line]
    assert lines == [f"(f pid={pid}) first line", f"(f pid={pid}) second line"]


def to_stderr(text: str) -> int:
    print(text, file=sys.stderr)
    sys.stderr.write("partial, no newline")
    return os.getpid()


def test_stderr_goes_to_stderr_and_partial_lines_are_flushed(captured: Captured) -> None:
    pid = rt.get(rt.remote(to_stderr).remote("oops"), timeout=30)
    captured.wait_err("no newline")
    assert f"(to_stderr pid={pid}) oops\n" in captured.err
    assert f"(to_stderr pid={pid}) partial, no newline" in captured.err
    assert "oops" not in captured.read().out


def child(i: int) -> int:
    print(f"child {i} here")
    return os.getpid()


remote_child = rt.remote(child)


def parent() -> list[int]:
    print("parent here")
    return rt.get([remote_child.remote(i) for i in range(3)])


def test_prints_of_nested_tasks_reach_the_driver(captured: Captured) -> None:
    pids = rt.get(rt.remote(parent).remote(), timeout=30)
    for i, pid in enumerate(pids):
        captured.wait_out(f"(child pid={pid}) child {i} here")
    captured.wait_out("(parent pid=")


OTHER_DRIVER = r"""
import sys
import runtime as rt
rt.init(address=sys.argv[1], token_file=sys.argv[2])

@rt.remote
def g():
    print("from the other driver")
    return 1

rt.get(g.remote(), timeout=30)
rt.shutdown()
"""


def test_prints_go_to_the_driver_that_owns_the_task(
        cluster: rt.ClusterInfo, captured: Captured, subprocess_env: Callable[..., dict[str, str]]) -> None:
    import subprocess
    out = subprocess.run([sys.executable, "-c", OTHER_DRIVER, cluster.address, cluster.token_file],
                         env=subprocess_env(), capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "(g pid=" in out.stdout and "from the other driver" in out.stdout
    # Our own task's line comes after any line the node could have misrouted to us.
    rt.get(rt.remote(child).remote(99), timeout=30)
    captured.wait_out("child 99 here")
    assert "from the other driver" not in captured.out + captured.err
