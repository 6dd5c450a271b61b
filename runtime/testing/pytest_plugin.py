"""pytest fixtures for cellray's tests and for tests of code built on cellray.

Enable with ``pytest_plugins = ["runtime.testing.pytest_plugin"]`` in a top-level
conftest.py.

``no_process_leaks`` (autouse)
    A test that starts a process must stop it. Before each test the fixture records this
    process's descendants and every cluster process on the machine (command line naming
    ``runtime.gcs``, ``runtime.node``, ``runtime.worker`` or ``runtime.scheduler``). After
    the test (and after the test's other fixtures have torn down) it waits up to
    ``process_leak_timeout`` seconds (ini option, default 10) for new ones to exit, kills
    what is left, process group and all, and reports the test as an error naming the pid
    and command line of each. Who counts as "new":

    - a descendant that appeared during the test, unless a process that was already there
      before the test started it (a worker that a module-scoped cluster's node manager
      forks belongs to that cluster, which is checked when it is torn down);
    - an *orphan*: a new cluster process that is not our descendant (its parent exited and
      it was reparented), provided it is ours: its environment names this test in
      ``PYTEST_CURRENT_TEST`` and no other pytest is among its ancestors. That keeps the
      check from touching clusters that other people or other test runs on the same
      machine start meanwhile.

``tmp_session_root``
    A fresh directory to pass as ``root=`` wherever the runtime takes a session root, so
    that a test's session directories, tokens and logs stay inside ``tmp_path``. (The
    default root is read from ``CELLRAY_TMPDIR`` at import time, so tests pass the root
    explicitly rather than change the environment.)
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
from collections.abc import Iterable, Iterator

import psutil
import pytest

from runtime.testing.wait import WaitTimeoutError, wait_for

#: Substrings of a command line that make a process a cluster process for the orphan scan.
CLUSTER_CMDLINE_MARKERS = ("runtime.gcs", "runtime.node", "runtime.worker", "runtime.scheduler")

#: Helpers that the standard library starts once per interpreter and keeps until it exits;
#: the first test to use shared memory or a forkserver starts them, and they are not leaks.
LONG_LIVED_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")

_Key = tuple[int, float]  # (pid, create_time): a pid alone may be reused during a test


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "process_leak_timeout",
        help="seconds no_process_leaks waits for a test's processes to exit before it "
             "kills them and fails the test (default 10)",
        default="10",
    )


def _key(proc: psutil.Process) -> _Key | None:
    try:
        return proc.pid, proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or f"[{proc.name()}]"
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return "(exited)"
    except psutil.AccessDenied:
        return "(command line not readable)"


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def _by_key(procs: Iterable[psutil.Process]) -> dict[_Key, psutil.Process]:
    out = {}
    for p in procs:
        k = _key(p)
        if k is not None:
            out[k] = p
    return out


def _descendants() -> dict[_Key, psutil.Process]:
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.NoSuchProcess:  # a child vanished mid-walk; one retry is enough
        children = psutil.Process().children(recursive=True)
    return {k: p for k, p in _by_key(children).items() if _alive(p)}


def _cluster_processes() -> dict[_Key, psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or ())
        if any(m in cmdline for m in CLUSTER_CMDLINE_MARKERS):
            found.append(p)
    return _by_key(found)


def _is_helper(proc: psutil.Process) -> bool:
    cmdline = _cmdline(proc)
    return any(h in cmdline for h in LONG_LIVED_HELPERS)


def _started_by_older_process(proc: psutil.Process, before: set[_Key]) -> bool:
    """True if an ancestor between us and ``proc`` existed before the test began."""
    me = os.getpid()
    try:
        parents = proc.parents()
    except psutil.NoSuchProcess:
        return False
    for parent in parents:
        if parent.pid == me:
            return False
        if _key(parent) in before:
            return True
    return False


def _is_our_orphan(proc: psutil.Process, nodeid: str) -> bool:
    """A cluster process that this test started and that was reparented away from us."""
    try:
        current = proc.environ().get("PYTEST_CURRENT_TEST", "")
        parents = proc.parents()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    # pytest sets PYTEST_CURRENT_TEST to "<nodeid> (setup|call|teardown)".
    if current.rsplit(" (", 1)[0] != nodeid:
        return False
    me = os.getpid()
    for parent in parents:
        if parent.pid == me:
            return False  # a descendant after all; the descendant check owns it
        if "pytest" in _cmdline(parent):
            return False  # another pytest run of a test with the same id
    return True


def _groups(procs: Iterable[psutil.Process]) -> set[int]:
    """The process groups of ``procs``, except our own (signalling that would kill pytest)."""
    mine = os.getpgrp()
    groups = set()
    for p in procs:
        try:
            pgid = os.getpgid(p.pid)
        except ProcessLookupError:
            continue
        if pgid != mine:
            groups.add(pgid)
    return groups


def _send(procs: Iterable[psutil.Process], groups: set[int], sig: int) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    # Also each process itself: it may share our group, or have left its group since.
    for p in procs:
        try:
            p.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _kill(procs: list[psutil.Process], grace: float = 2.0) -> list[psutil.Process]:
    """SIGTERM the processes' groups, then SIGKILL them; return the processes still alive."""
    # Groups are read once, up front: a group outlives its leader while members remain,
    # and the second round must reach members that ignored SIGTERM.
    groups = _groups(procs)
    _send(procs, groups, signal.SIGTERM)
    # wait_procs also reaps the ones that are our own children, so no zombie remains.
    _, alive = psutil.wait_procs(procs, timeout=grace)
    _send(alive, groups, signal.SIGKILL)
    _, alive = psutil.wait_procs(alive, timeout=5.0)
    return [p for p in alive if _alive(p)]


def _describe(proc: psutil.Process, orphan: bool) -> str:
    how = "an orphan: its parent exited and it was reparented" if orphan else "started by this test"
    return f"  pid {proc.pid} ({how}): {_cmdline(proc)}"


@pytest.fixture(autouse=True)
def no_process_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if processes it started are still running after its teardown."""
    desc_before = set(_descendants())
    cluster_before = set(_cluster_processes())
    yield

    leaked: dict[_Key, tuple[psutil.Process, bool]] = {}
    for k, p in _descendants().items():
        if k in desc_before or _is_helper(p) or _started_by_older_process(p, desc_before):
            continue
        leaked[k] = (p, False)
    for k, p in _cluster_processes().items():
        if k in cluster_before or k in leaked or not _alive(p):
            continue
        if _is_our_orphan(p, request.node.nodeid):
            leaked[k] = (p, True)
    if not leaked:
        return

    timeout = float(request.config.getini("process_leak_timeout"))
    try:
        wait_for(lambda: not any(_alive(p) for p, _ in leaked.values()), timeout,
                 what="the processes this test started to exit", interval=0.05)
        return
    except WaitTimeoutError:
        pass

    remaining = [(p, orphan) for p, orphan in leaked.values() if _alive(p)]
    lines = [_describe(p, orphan) for p, orphan in remaining]  # before the kill hides cmdlines
    start = time.monotonic()
    survivors = _kill([p for p, _ in remaining])
    verdict = (f"killed them ({time.monotonic() - start:.1f} s)" if not survivors else
               "could not kill pid(s) " + ", ".join(str(p.pid) for p in survivors))
    pytest.fail(
        f"{request.node.nodeid} left {len(remaining)} process(es) running "
        f"{timeout:g} s after its teardown; {verdict}:\n" + "\n".join(lines) + "\n"
        "Stop every process a test starts, in a `finally` or a fixture "
        "(e.g. ProcessHandle.stop() or LocalCluster's `with` block).",
        pytrace=False,
    )


@pytest.fixture
def tmp_session_root(tmp_path: pathlib.Path) -> pathlib.Path:
    """An empty directory to use as the session root (``root=``) instead of /tmp/cellray.

    The environment is left alone: ``runtime._session`` reads ``CELLRAY_TMPDIR`` once, at
    import, so changing it in a test would not take effect anyway.
    """
    root = tmp_path / "cellray"
    root.mkdir()
    return root
