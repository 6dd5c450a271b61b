"""The no_process_leaks fixture catches, reports and kills processes a test leaves behind.

Each check runs an inner pytest session (in a subprocess, with the plugin enabled) whose
test leaks a process on purpose, then asserts that the inner run failed with the leak
report and that the leaked process is gone.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys

import psutil
import pytest

import runtime
from runtime.testing import wait_for

pytest_plugins = ["pytester"]

REPO_ROOT = pathlib.Path(runtime.__file__).resolve().parents[1]

LEAKS_A_CHILD = """
import pathlib, subprocess

def test_leaks_a_sleep():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    pathlib.Path("leaked.pid").write_text(str(proc.pid))
"""

# The middle process starts the "worker" in a new session and exits without waiting,
# so the worker is reparented away from the test: an orphan, not a descendant.
LEAKS_AN_ORPHAN = """
import pathlib, subprocess, sys

MIDDLE = (
    "import subprocess, sys\\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)',"
    " 'runtime.worker'], start_new_session=True, stdin=subprocess.DEVNULL,"
    " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\\n"
    "print(p.pid)\\n"
)

def test_leaks_an_orphan():
    out = subprocess.run([sys.executable, "-c", MIDDLE], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    pathlib.Path("leaked.pid").write_text(out.strip())
"""

CLEAN = """
import subprocess

def test_stops_what_it_starts():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    proc.terminate()
    proc.wait()
"""


def _run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
               source: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=source)
    # The inner interpreter must import `runtime` even when it is not pip-installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return pytester.runpytest_subprocess(
        "-p", "runtime.testing.pytest_plugin", "-p", "no:cacheprovider",
        "-o", "process_leak_timeout=0.5", timeout=60)


def _leaked_process(pytester: pytest.Pytester) -> psutil.Process | None:
    pid = int((pytester.path / "leaked.pid").read_text())
    try:
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    # The pid may have been reused since; only the process we leaked counts.
    return proc if "60" in cmdline else None


def _is_gone(pytester: pytest.Pytester) -> bool:
    proc = _leaked_process(pytester)
    if proc is None:
        return True
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # dead, waiting for init to reap it
    except psutil.NoSuchProcess:
        return True


def _cleanup(pytester: pytest.Pytester) -> None:
    """If the fixture under test failed to kill the process, do it here."""
    path = pytester.path / "leaked.pid"
    if path.exists() and (proc := _leaked_process(pytester)) is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_leaked_child_fails_the_test_and_is_killed(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        result = _run_inner(pytester, monkeypatch, LEAKS_A_CHILD)
        pid = (pytester.path / "leaked.pid").read_text()
        assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
        # The test itself passed; the fixture's teardown reports the leak.
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines([
            "*test_leaks_a_sleep left 1 process(es) running 0.5 s after its teardown; killed them*",
            f"*pid {pid} (started by this test): sleep 60*",
        ])
        wait_for(lambda: _is_gone(pytester), timeout=10, what=f"leaked sleep (pid {pid}) to be gone")
    finally:
        _cleanup(pytester)


def test_a_leaked_orphan_fails_the_test_and_is_killed(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        result = _run_inner(pytester, monkeypatch, LEAKS_AN_ORPHAN)
        pid = (pytester.path / "leaked.pid").read_text()
        assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines([
            "*test_leaks_an_orphan left 1 process(es) running*; killed them*",
            (f"*pid {pid} (an orphan: its parent exited and it was reparented): "
             f"{sys.executable} -c import time; time.sleep(60) runtime.worker*"),
        ])
        wait_for(lambda: _is_gone(pytester), timeout=10, what=f"orphan (pid {pid}) to be gone")
    finally:
        _cleanup(pytester)


def test_a_test_that_stops_its_processes_passes(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run_inner(pytester, monkeypatch, CLEAN)
    result.assert_outcomes(passed=1)
    assert "process(es) running" not in result.stdout.str()
