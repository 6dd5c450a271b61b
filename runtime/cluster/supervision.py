"""``Supervisor``: the head brings back its GCS and global scheduler replicas when they die.

A ``Supervisor`` watches one ``runtime.cluster.head.Head``. When the GCS exits without
being asked to (kill -9, a crash, its storage gone), it starts it again on the same port
with the same storage, so that every other process finds it at the address it knows; a
replica that exits is started again under the same name. ``runtime.cluster.restarts``
decides when: at once, then with a growing backoff, at most ``max_restarts`` times a
minute per process, after which the supervisor leaves it dead and says why.

Where it runs:

- ``rt.init()`` (``LocalCluster`` not detached): a daemon thread of the driver, which is
  the parent of the head's processes anyway; ``LocalCluster.stop()`` stops it before
  stopping any process.
- ``cellray start --head``: the head process ``python -m runtime.gcs.supervisor``, which
  outlives the command; ``cellray stop`` stops it before the rest.

Each death, restart and give-up is one line in the session's ``logs/supervisor.log``::

    ... WARNING supervisor[4119]: the GCS (pid 4120) was killed by SIGKILL; restarting it
        on 127.0.0.1:6380 (restart 1 within 60 s)
    ... INFO supervisor[4119]: the GCS is back on 127.0.0.1:6380 as pid 4388, 0.9 s after
        it died (storage sqlite:///.../gcs.db, cluster id 5be1...)

The restart counts go to the GCS ``kv`` table (``restarts.RESTARTS_KEY``) once the
restarted process serves, and to ``supervisor.json`` in the session directory (read by
``cellray status`` when the GCS does not answer, to say that the head gave up on it).
That file also holds, under ``"stopped"``, each process the head left stopped: its exit
code, pid, when (wall clock), why, its log and its last error line. ``storage_lost``
reads it for a driver whose GCS stopped answering: when the GCS exited because its
storage stayed unreachable (``EXIT_STORAGE_LOST``), the driver's calls that need it fail
at once with an error that says so (``runtime.gcs.reconnect.head_stopped_error``).

The loop is one thread that polls every ``poll_s`` seconds and never blocks on a child:
each process is in one phase (running, backoff, starting, gave up) and each pass moves it
on, so a GCS that dies while a replica starts is seen at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from runtime.cluster.head import GCS_NAME, Head
from runtime.cluster.process import ProcessHandle
from runtime.cluster.restarts import (
    EXIT_STORAGE_LOST,
    GCS_LEAVE_CODES,
    RESTARTS_KEY,
    Leave,
    Restart,
    RestartBudget,
    RestartCounts,
    RestartPolicy,
)
from runtime.exceptions import ConnectionLostError
from runtime.gcs.client import GcsClient

__all__ = ["STATUS_FILE", "Supervisor", "describe_exit", "read_status", "storage_lost"]

logger = logging.getLogger(__name__)

#: The supervisor's report in the session directory: its pid and the restart counts.
STATUS_FILE = "supervisor.json"
#: Its log, in the session's ``logs/``.
LOG_FILE = "supervisor.log"
#: Seconds the supervisor tries to write the restart counts to a GCS that just came back.
_PUBLISH_S = 5.0
#: Bytes of a stopped process's log searched for its last error line.
_LOG_TAIL = 64 * 1024

_Phase = Literal["running", "backoff", "starting", "stopped"]


def describe_exit(code: int) -> str:
    """``"exited with code 1"`` or ``"was killed by SIGKILL"`` for a ``Popen.returncode``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def read_status(session_dir: pathlib.Path) -> dict[str, Any] | None:
    """The session's ``supervisor.json`` (pid, counts, give-ups), or None when there is none."""
    try:
        value = json.loads((session_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def storage_lost(session_dir: pathlib.Path, since: float = 0.0) -> str | None:
    """Why the head left the GCS stopped because its storage stayed unreachable, when it did
    so after ``since`` (wall-clock seconds); else None (no report, another exit, an old one).

    The head's reason and the GCS's own error line, for a driver's error::

        its storage stayed unreachable (exit code 3); ...; the GCS said: GCS storage redis://...
    """
    report = read_status(session_dir) or {}
    stopped = report.get("stopped")
    gcs = stopped.get(GCS_NAME) if isinstance(stopped, dict) else None
    if not isinstance(gcs, dict) or gcs.get("code") != EXIT_STORAGE_LOST:
        return None
    at = gcs.get("at")
    if not isinstance(at, (int, float)) or at < since:
        return None
    error = gcs.get("error")
    return str(gcs.get("reason", "")) + (f"; the GCS said: {error}" if error else "")


def last_error_line(log: pathlib.Path) -> str:
    """The message of the last ERROR line in the end of ``log`` ("" when there is none)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _LOG_TAIL))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for line in reversed(tail.splitlines()):
        if " ERROR " in line:
            # "<time> ERROR gcs[pid] logger: message" (runtime._daemon's format)
            rest = line.split(" ERROR ", 1)[1]
            return rest.split(": ", 1)[1] if ": " in rest else rest
    return ""


@dataclass
class _Watched:
    """One supervised process: its phase, and when the phase is due to move on."""

    name: str
    budget: RestartBudget
    phase: _Phase = "running"
    #: backoff: when to start it again; starting: when to give up waiting for it.
    due: float = 0.0
    #: When its death was seen (for the time until it serves again).
    died_at: float = 0.0


class Supervisor:
    """Watch ``head``'s processes and start again those that die; see the module docstring.

    ``start()`` runs it in a daemon thread, ``stop()`` stops it (and returns once it
    has stopped, so no restart can follow); ``run(stop_event)`` runs it in the caller's
    thread until ``stop_event`` (or ``stop()``) is set; ``check()`` is one pass.
    ``counts`` holds the restarts so far.

    ``publish(counts)`` tells the GCS the counts once a restarted process serves (after
    the restart is logged); by default it writes them to the GCS's ``kv`` table. ``clock``
    and ``publish`` let a test drive the supervisor without a cluster.
    """

    def __init__(self, head: Head, token: str, *, policy: RestartPolicy | None = None,
                 log_to_file: bool = True, poll_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic,
                 publish: Callable[[RestartCounts], None] | None = None) -> None:
        self.head = head
        self.counts = RestartCounts()
        self._publish = publish or self._publish_to_gcs
        self._token = token
        self._policy = policy or RestartPolicy()
        self._log_file = head.options.session_dir / "logs" / LOG_FILE if log_to_file else None
        self._poll_s = poll_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watched = {GCS_NAME: _Watched(GCS_NAME, RestartBudget(self._policy, GCS_LEAVE_CODES))}
        self._watched.update({name: _Watched(name, RestartBudget(self._policy))
                              for name in head.schedulers})
        #: The processes left stopped, by name: exit code, pid, when, why, log, last error.
        self._stopped: dict[str, dict[str, Any]] = {}

    # ---- running ----

    def start(self) -> Supervisor:
        """Supervise from a daemon thread of this process."""
        self._thread = threading.Thread(target=self.run, daemon=True,
                                        name=f"cellray-supervisor-{self.head.address}")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop supervising; returns once no restart can happen any more. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def run(self, stop: threading.Event | None = None) -> None:
        """Check every ``poll_s`` seconds until ``stop`` (default: the one of ``stop()``) is set."""
        if stop is not None:
            self._stop = stop  # one event: a pass under way sees it too
        stop = self._stop
        self._write_status()
        while not stop.is_set():
            try:
                self.check()
            except Exception:  # a bug here must not end supervision silently
                logger.exception("the head's supervisor failed a check; it carries on")
            stop.wait(self._poll_s)

    def check(self) -> None:
        """One pass: the GCS first, then each replica (started only while the GCS serves)."""
        now = self._clock()
        head = self.head
        gcs = self._watched[GCS_NAME]
        self._step(gcs, head.gcs, now, head.spawn_gcs, self._gcs_back, may_start=True)
        for name, watched in self._watched.items():
            if name != GCS_NAME:
                self._step(watched, head.schedulers.get(name), now,
                           functools.partial(head.spawn_scheduler, name),
                           functools.partial(self._scheduler_back, name),
                           may_start=gcs.phase == "running")

    def _step(self, w: _Watched, handle: ProcessHandle | None, now: float,
              spawn: Callable[[], ProcessHandle],
              back: Callable[[dict[str, Any], float], None], may_start: bool) -> None:
        """Move one process on: an exit seen, a restart due (at once the first time), a
        restarted process ready or late."""
        if handle is None or self._stop.is_set():
            return
        if w.phase in ("running", "starting"):
            code = handle.popen.poll()
            if w.phase == "starting" and code is None:
                info = handle.poll_ready()
                if info is not None:
                    w.phase = "running"
                    back(info, now - w.died_at)
                    return
                if now > w.due:
                    self._log(logging.WARNING, "%s (pid %d) was not ready %.0f s after its restart; "
                              "stopping it. Its log: %s", self._what(w.name), handle.pid,
                              self.head.options.settings.start_timeout_s, handle.log_path)
                    code = handle.stop()
            if code is not None:
                self._exited(w, handle, code, now)
        if w.phase == "backoff" and now >= w.due and may_start:
            spawn()
            w.phase, w.due = "starting", now + self.head.options.settings.start_timeout_s

    def _exited(self, w: _Watched, handle: ProcessHandle, code: int, now: float) -> None:
        if w.phase == "running":
            w.died_at = now
        decision = w.budget.on_exit(now, code)
        what = self._what(w.name)
        if not isinstance(decision, Restart):
            w.phase = "stopped"
            self.counts.not_restarted[w.name] = decision.reason
            self._stopped[w.name] = {"code": code, "pid": handle.pid, "at": time.time(),
                                     "reason": decision.reason, "log": str(handle.log_path),
                                     "error": last_error_line(handle.log_path)}
            said = self._stopped[w.name]["error"]
            if isinstance(decision, Leave) and code == EXIT_STORAGE_LOST:
                self._log(logging.ERROR, "%s (pid %d) stopped: %s; the head leaves it stopped. It "
                          "said: %s. Its log: %s", what, handle.pid, decision.reason, said or "-",
                          handle.log_path)
            elif isinstance(decision, Leave):
                self._log(logging.WARNING, "%s (pid %d) stopped: %s; the head leaves it stopped. "
                          "Its log: %s", what, handle.pid, decision.reason, handle.log_path)
            else:
                self._log(logging.ERROR, "%s (pid %d) %s; the head gives up on it: %s. Its log: %s",
                          what, handle.pid, describe_exit(code), decision.reason, handle.log_path)
            self._write_status()
            return
        w.phase, w.due = "backoff", now + decision.delay_s
        where = f" on {self.head.address}" if w.name == GCS_NAME else ""
        after = f" in {decision.delay_s:g} s" if decision.delay_s else ""
        self._log(logging.WARNING, "%s (pid %d) %s; restarting it%s%s (restart %d within %g s)",
                  what, handle.pid, describe_exit(code), where, after, decision.attempt,
                  self._policy.window_s)

    # ---- after a restart ----

    def _gcs_back(self, info: dict[str, Any], took: float) -> None:
        self.head.gcs_ready(info)
        self.counts.gcs += 1
        self.head.record()
        self._log(logging.INFO, "the GCS is back on %s as pid %d, %.1f s after it died (storage %s, "
                  "cluster id %s)", self.head.address, info.get("pid", 0), took,
                  info.get("storage") or "unknown", info.get("cluster_id") or "unknown")
        self._write_status()
        self._publish(self.counts)

    def _scheduler_back(self, name: str, info: dict[str, Any], took: float) -> None:
        self.head.scheduler_info[name] = info
        self.counts.schedulers[name] = self.counts.schedulers.get(name, 0) + 1
        self.head.record()
        self._log(logging.INFO, "global scheduler %s is back as pid %d, %.1f s after it died",
                  name, info.get("pid", 0), took)
        self._write_status()
        self._publish(self.counts)

    def _publish_to_gcs(self, counts: RestartCounts) -> None:
        """Write ``counts`` to the GCS's ``kv`` table (a warning in the log when it cannot).

        Tried for ``_PUBLISH_S`` seconds: the GCS serves already, but a channel of this
        process to its address may still wait out gRPC's reconnect backoff from the outage.
        """
        timeout = self.head.options.settings.probe_timeout_s

        async def report() -> None:
            deadline = time.monotonic() + _PUBLISH_S
            delay = 0.05
            while True:
                try:
                    async with GcsClient(self.head.address, self._token, timeout=timeout) as gcs:
                        await gcs.put("kv", RESTARTS_KEY, counts.encode())
                        return
                except ConnectionLostError:
                    if time.monotonic() + delay > deadline or self._stop.is_set():
                        raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

        try:
            asyncio.run(report())
        except Exception as err:  # noqa: BLE001 - the GCS may have died again; the next restart retries
            self._log(logging.WARNING, "could not write the restart counts to the GCS at %s: %s",
                      self.head.address, err)

    # ---- reporting ----

    @staticmethod
    def _what(name: str) -> str:
        return "the GCS" if name == GCS_NAME else f"global scheduler {name}"

    def _write_status(self) -> None:
        path = self.head.options.session_dir / STATUS_FILE
        tmp = path.with_name(path.name + ".tmp")
        body = {"pid": os.getpid(), "address": self.head.address,
                **json.loads(self.counts.encode()), "stopped": self._stopped}
        try:
            tmp.write_text(json.dumps(body))
            os.replace(tmp, path)
        except OSError as err:
            logger.warning("could not write %s: %s", path, err)

    def _log(self, level: int, msg: str, *args: object) -> None:
        """Log, and in a driver's thread also append to ``logs/supervisor.log``."""
        if self._log_file is None:
            logger.log(level, msg, *args)
            return
        logger.debug(msg, *args)  # a notebook's stderr is no place for it: the file is
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} {logging.getLevelName(level)} supervisor[{os.getpid()}]: {msg % args}\n"
        try:
            with open(self._log_file, "a") as f:
                f.write(line)
        except OSError as err:
            logger.warning("could not write %s: %s (%s)", self._log_file, err, line.strip())

    def __repr__(self) -> str:
        phases = ", ".join(f"{w.name} {w.phase}" for w in self._watched.values())
        return f"<Supervisor {self.head.address}: {phases}; {self.counts.gcs} GCS restart(s)>"
