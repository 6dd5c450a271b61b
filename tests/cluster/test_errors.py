"""Errors on real processes: user exceptions, crashing workers, arguments and results
that cannot travel, and functions a worker cannot load. After each, the node (and where
it applies the very worker) keeps serving."""

from __future__ import annotations

import errno
import importlib
import os
import pathlib
import re
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest

import runtime as rt
from runtime.exceptions import ClusterError, TaskError, WorkerCrashedError
from runtime.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@rt.remote
def pid_task() -> int:
    return os.getpid()


@rt.remote
def add(a: int, b: int) -> int:
    return a + b


def _finished_row(gcs: Any, ref: rt.ObjectRef) -> Any:
    """The task's GCS row once it reached a final state."""
    def final() -> Any:
        row = gcs.task_row(ref)
        return row if row is not None and row.state in ("FINISHED", "FAILED", "CANCELLED") else None
    return wait_for(final, what=f"a final state for task {ref.task_id()[:12]} in the GCS")


def _node_serves(our_cluster_pids: Callable[[], dict[str, list[int]]], node_pids: list[int]) -> None:
    assert our_cluster_pids()["node"] == node_pids, "the node manager changed"
    assert rt.get([add.remote(i, 1) for i in range(4)], timeout=30) == [1, 2, 3, 4]


# ---- user exceptions -------------------------------------------------------------------

def raise_value_error(x: int) -> None:
    if x > 0:
        raise ValueError(f"bad value {x}")


def test_task_error_is_also_the_original_type(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    def failing(x: int) -> None:
        raise_value_error(x)

    try:
        rt.get(failing.remote(3))
    except ValueError as e:  # `except ValueError` works
        err = e
    else:
        pytest.fail("no error")
    assert isinstance(err, TaskError) and isinstance(err, ClusterError)
    text = str(err)
    assert "failing()" in text
    assert cluster.node_id[:12] in text
    assert f"worker pid {err.pid}" in text and err.pid != os.getpid()
    assert "Traceback" in text and "raise_value_error" in text and "bad value 3" in text
    assert "ValueError: bad value 3" in text
    assert "runtime/worker" not in text, "cellray's own frames should be cut from the traceback"
    assert isinstance(err.cause, ValueError) and err.function_name.endswith("failing")


def test_errors_of_dependencies_reach_the_dependent_get(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    def failing() -> int:
        raise KeyError("upstream")

    with pytest.raises(KeyError, match="upstream"):
        rt.get(add.remote(failing.remote(), 1))


class NeedsTwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a} and {b}")


def test_an_exception_that_cannot_be_rebuilt_still_reports(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    def odd() -> None:
        raise NeedsTwoArgs(1, 2)

    with pytest.raises(TaskError) as info:
        rt.get(odd.remote())
    assert "NeedsTwoArgs" in str(info.value) and "1 and 2" in str(info.value)


def test_fields_of_builtin_exceptions_survive(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    def opens(path: str) -> None:
        open(path)

    with pytest.raises(FileNotFoundError) as info:
        rt.get(opens.remote("/no/such/file"))
    assert isinstance(info.value, TaskError)
    assert (info.value.errno, info.value.filename) == (errno.ENOENT, "/no/such/file")

    @rt.remote
    def decodes() -> str:
        return b"ok \xff".decode("utf-8")

    with pytest.raises(UnicodeDecodeError) as decode_info:
        rt.get(decodes.remote())
    assert (decode_info.value.start, decode_info.value.reason) == (3, "invalid start byte")


def test_exception_groups_arrive_as_task_errors(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    def several() -> None:
        raise ExceptionGroup("several", [ValueError("one"), KeyError("two")])

    ref = several.remote()
    with pytest.raises(ExceptionGroup) as info:
        rt.get(ref)
    assert isinstance(info.value, TaskError) and "several()" in str(info.value)
    assert [type(e) for e in info.value.exceptions] == [ValueError, KeyError]
    caught = []
    try:
        rt.get(ref)
    except* ValueError as group:
        caught.append(group.exceptions)
    except* KeyError:
        pass
    assert caught and isinstance(caught[0][0], ValueError)


def test_a_function_capturing_something_unpicklable_fails_at_remote(cluster: rt.ClusterInfo) -> None:
    lock = threading.Lock()

    @rt.remote
    def captures() -> bool:
        return lock.locked()

    with pytest.raises(TypeError, match="captures cannot be sent to the cluster"):
        captures.remote()


# ---- workers that die ------------------------------------------------------------------

def _assert_exit_code(cluster: rt.ClusterInfo, text: str, expected: int) -> None:
    """The crash message names the worker's real exit code."""
    found = re.search(r"pid (\d+), exit code (-?\d+)", text)
    assert found, text
    assert int(found[2]) == expected, text


def test_worker_exit_fails_at_once_with_max_retries_0(
        cluster: rt.ClusterInfo, gcs: Any, our_cluster_pids: Callable[[], dict[str, list[int]]]) -> None:
    node_pids = our_cluster_pids()["node"]

    @rt.remote(max_retries=0)
    def exits() -> None:
        os._exit(1)

    ref = exits.remote()
    with pytest.raises(WorkerCrashedError) as info:
        rt.get(ref, timeout=30)
    text = str(info.value)
    assert "exits()" in text and "max_retries=0" in text and "1 time(s)" in text
    row = _finished_row(gcs, ref)
    assert row.state == "FAILED" and row.attempt == 0
    _node_serves(our_cluster_pids, node_pids)
    _assert_exit_code(cluster, text, 1)


def test_segfault_is_a_worker_crash(cluster: rt.ClusterInfo,
                                    our_cluster_pids: Callable[[], dict[str, list[int]]]) -> None:
    node_pids = our_cluster_pids()["node"]

    @rt.remote(max_retries=0)
    def segfault() -> None:
        import ctypes
        ctypes.string_at(0)

    with pytest.raises(WorkerCrashedError, match=r"segfault\(\)") as info:
        rt.get(segfault.remote(), timeout=30)
    _node_serves(our_cluster_pids, node_pids)
    _assert_exit_code(cluster, str(info.value), -signal.SIGSEGV)


def test_crash_on_first_attempt_is_retried(cluster: rt.ClusterInfo, tmp_path: pathlib.Path,
                                           our_cluster_pids: Callable[[], dict[str, list[int]]]) -> None:
    node_pids = our_cluster_pids()["node"]
    marker = tmp_path / "crashed-once"

    @rt.remote(max_retries=2)
    def crash_once(path: str) -> str:
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return "second attempt"

    assert rt.get(crash_once.remote(str(marker)), timeout=30) == "second attempt"
    _node_serves(our_cluster_pids, node_pids)


def test_retries_are_bounded(cluster: rt.ClusterInfo, tmp_path: pathlib.Path) -> None:
    attempts = tmp_path / "attempts"

    @rt.remote(max_retries=1)
    def always_crashes(path: str) -> None:
        with open(path, "a") as f:
            f.write("x")
        os._exit(7)

    with pytest.raises(WorkerCrashedError, match="2 time"):
        rt.get(always_crashes.remote(str(attempts)), timeout=30)
    assert attempts.read_text() == "xx"


# ---- what cannot be sent: errors at .remote(), nothing submitted -----------------------

def _assert_never_submitted(gcs: Any, name: str) -> None:
    # Task events reach the GCS in order: once a later task's row is final there, a row
    # for anything submitted before it would be there too.
    _finished_row(gcs, add.remote(0, 0))
    names = {row.name for row in gcs.task_rows().values()}
    assert name not in names, f"{name} reached the cluster"


def test_unpicklable_argument_is_a_type_error_at_remote(cluster: rt.ClusterInfo, gcs: Any) -> None:
    name = f"takes_lock_{secrets.token_hex(4)}"
    takes = identity_named(name)
    with pytest.raises(TypeError, match=r"argument 1 \(lock") as info:
        takes.remote(1, threading.Lock())
    assert "Nothing was submitted" in str(info.value) and name in str(info.value)
    with pytest.raises(TypeError, match="keyword argument 'b'"):
        takes.remote(1, b=threading.Lock())
    _assert_never_submitted(gcs, name)


def test_wrong_number_of_arguments_is_a_type_error_at_remote(cluster: rt.ClusterInfo, gcs: Any) -> None:
    name = f"two_args_{secrets.token_hex(4)}"
    takes = identity_named(name)
    with pytest.raises(TypeError, match="Nothing was submitted"):
        takes.remote()
    with pytest.raises(TypeError, match="Nothing was submitted"):
        takes.remote(1, 2, 3)
    with pytest.raises(TypeError, match="Nothing was submitted"):
        takes.remote(1, c=2)
    _assert_never_submitted(gcs, name)


def identity_named(name: str) -> rt.RemoteFunction[Any, Any]:
    @rt.remote(name=name)
    def takes(a: Any, b: Any = None) -> Any:
        return a

    return takes


# ---- what fails inside the worker: that task fails, the worker keeps serving -----------

def test_unpicklable_result_fails_the_task_only(cluster: rt.ClusterInfo, gcs: Any,
        assert_worker_serves: Callable[[int], None]) -> None:
    @rt.remote
    def returns_lock() -> Any:
        return threading.Lock()

    ref = returns_lock.remote()
    with pytest.raises(TypeError, match=r"returns_lock\(\).*could not be pickled"):
        rt.get(ref, timeout=30)
    assert_worker_serves(_finished_row(gcs, ref).worker_pid)


def test_wrong_number_of_returned_values(cluster: rt.ClusterInfo, gcs: Any,
        assert_worker_serves: Callable[[int], None]) -> None:
    @rt.remote(num_returns=2)
    def only_one() -> int:
        return 1

    a, b = only_one.remote()
    for ref in (a, b):
        with pytest.raises(ValueError, match="returned 1 value, expected 2"):
            rt.get(ref, timeout=30)
    assert_worker_serves(_finished_row(gcs, a).worker_pid)


def test_function_whose_module_is_missing_on_the_worker(
        cluster: rt.ClusterInfo, gcs: Any, tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
        assert_worker_serves: Callable[[int], None]) -> None:
    name = f"only_on_the_driver_{secrets.token_hex(4)}"
    (tmp_path / f"{name}.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the driver's sys.path only
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)  # removed again after the test
    double = rt.remote(module.double)

    ref = double.remote(21)
    with pytest.raises(ModuleNotFoundError) as info:
        rt.get(ref, timeout=30)
    assert isinstance(info.value, TaskError)
    text = str(info.value)
    assert name in text and "could not load double()" in text
    assert_worker_serves(_finished_row(gcs, ref).worker_pid)


class HoldsALock(Exception):
    """An exception whose instances cannot be pickled (a lock in their ``__dict__``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_holds_a_lock() -> None:
    raise HoldsALock("the original message")


def test_an_exception_that_cannot_be_pickled_says_so_with_its_traceback(
        cluster: rt.ClusterInfo, gcs: Any, assert_worker_serves: Callable[[int], None]) -> None:
    @rt.remote
    def raises_unpicklable() -> None:
        raise_holds_a_lock()

    ref = raises_unpicklable.remote()
    with pytest.raises(TaskError) as info:
        rt.get(ref, timeout=30)
    err = info.value
    text = str(err)
    assert not isinstance(err, HoldsALock) and err.cause is None
    assert "raises_unpicklable()" in text and "could not be pickled" in text
    assert "cannot pickle '_thread.lock' object" in text
    # The remote traceback, as text: the frames and the original exception line.
    assert "raise_holds_a_lock" in text and "HoldsALock: the original message" in text
    assert err.cause_type_name == "HoldsALock"
    assert_worker_serves(_finished_row(gcs, ref).worker_pid)
