"""Fixtures for the widget tests that need a real cluster.

``cluster`` is module-scoped: ``rt.init(num_cpus=2)`` before the module's first test that
asks for it, ``rt.shutdown()`` after its last. Tests that start their own cluster do not
ask for it and run before the first test that does. ``Flag`` holds a task running until
the test says so (a file the task waits for), so no test sleeps for time to pass.
"""

from __future__ import annotations

import os
import pathlib
import sys
import threading
import time
from collections.abc import Callable, Iterator

import cloudpickle
import pytest

import runtime as rt

# Test modules are importable here, not in workers: ship what they define by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster() -> Iterator[rt.ClusterInfo]:
    """One local cluster (one node, 2 CPUs) for the whole module."""
    assert not rt.is_initialized(), "a previous test left rt initialized"
    info = rt.init(num_cpus=2, log_to_driver=False)
    try:
        yield info
    finally:
        rt.shutdown()


class Flag:
    """A file a task waits on (``wait()`` runs inside the task) and the test sets."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)

    def set(self) -> None:
        pathlib.Path(self.path).touch()

    def wait(self, timeout: float = 60.0) -> None:
        """Block until set (the poll interval is not a timing guess)."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"flag {self.path} was never set")
            time.sleep(0.01)


@pytest.fixture
def make_flag(tmp_path: pathlib.Path) -> Callable[[str], Flag]:
    """``make_flag("name")``: a fresh, unset Flag under ``tmp_path``."""
    return lambda name: Flag(tmp_path / f"flag-{name}")


def _widget_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith(("cellray-dashboard", "cellray-subscription"))]


@pytest.fixture
def widget_threads() -> Callable[[], list[threading.Thread]]:
    """``widget_threads()``: live threads a dashboard started (its refresher) or had
    runtime.state start for it (its subscription's delivery thread)."""
    return _widget_threads
