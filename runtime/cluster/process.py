"""ProcessHandle: start a daemon, wait until it is ready, stop it for sure.

Readiness is a signal: the child writes a JSON ready file (its real port, ids) by an
atomic rename (``DaemonContext.ready`` in ``runtime._daemon``). The parent waits against
a deadline and, on every poll, checks whether the child already exited; if so it fails
at once with the exit code and the log's tail.
Stopping is bounded: SIGTERM to the child's process group, a grace period, then SIGKILL,
and ``stop()`` returns only when the process is gone.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from runtime.exceptions import ClusterStartError

#: The name this module gave ``ClusterStartError`` (a ``RuntimeError``) before it joined
#: the tree of ``runtime.exceptions``.
ProcessStartError = ClusterStartError


def _tail(path: pathlib.Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


class ProcessHandle:
    """One child process running ``python -m <module> <args>``, logging to ``log_path``."""

    def __init__(self, name: str, module: str, args: Sequence[str], log_path: pathlib.Path,
                 ready_path: pathlib.Path | None = None, env: dict[str, str] | None = None,
                 detach: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        self.ready_path = ready_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ if env is None else env)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = [sys.executable, "-m", module, *args]
        if ready_path is not None:
            cmd += ["--ready-file", str(ready_path)]
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=full_env, start_new_session=True, close_fds=True,
                cwd=None if not detach else "/",
            )
        self.pid = self.popen.pid

    def poll_ready(self) -> dict[str, Any] | None:
        """The ready file's contents once the child wrote it, else None (never blocks)."""
        assert self.ready_path is not None
        try:
            info: dict[str, Any] = json.loads(self.ready_path.read_text())
        except FileNotFoundError:
            return None
        return info

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Block until the ready file appears; raise ``ClusterStartError`` if the child dies or times out."""
        assert self.ready_path is not None
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            info = self.poll_ready()
            if info is not None:
                return info
            code = self.popen.poll()
            if code is not None:
                raise ClusterStartError(
                    f"{self.name} (pid {self.pid}) exited with code {code} before it was ready; "
                    f"its log says why. Last lines of {self.log_path}:\n{_tail(self.log_path)}",
                    process=self.name, exit_code=code, log_path=str(self.log_path))
            if time.monotonic() > deadline:
                self.stop()
                raise ClusterStartError(
                    f"{self.name} (pid {self.pid}) was not ready within {timeout:.0f} s (a slow "
                    f"machine may need a larger CELLRAY_START_TIMEOUT_S). Last lines of "
                    f"{self.log_path}:\n{_tail(self.log_path)}",
                    process=self.name, exit_code=None, log_path=str(self.log_path))
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def request_stop(self) -> None:
        """SIGTERM the process group without waiting (``stop`` then waits for it)."""
        if self.popen.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL; return the exit code."""
        if self.popen.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait()
        # Anything left in the group (e.g. a worker that ignored SIGTERM) goes too.
        _signal_group(self.pid, signal.SIGKILL)
        return self.popen.returncode

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self.popen.returncode}"
        return f"<ProcessHandle {self.name} pid={self.pid} {state}>"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_pid(pid: int, grace: float = 5.0) -> bool:
    """Stop a process we did not start in this interpreter (``cellray stop``). True if it was running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)
    return True


def _running(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) is gone."""
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
