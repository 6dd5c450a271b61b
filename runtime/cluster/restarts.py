"""When the head restarts a process that died, and how the restarts are reported.

Pure: no processes, no clock of its own (the caller passes ``now``), so the policy is
tested with plain numbers. ``runtime.cluster.supervision`` applies it to the GCS and the
global scheduler replicas.

A process that exits while nobody asked it to is restarted at once the first time, then
after a growing wait (``backoff_s``, doubled each time, at most ``backoff_max_s``), as
long as it died fewer than ``max_restarts`` times in the last ``window_s`` seconds;
after that the head gives up on it and says so in its log::

    >>> budget = RestartBudget(RestartPolicy(max_restarts=3, window_s=60.0))
    >>> [budget.on_exit(now=t, code=-9) for t in (0.0, 1.0, 2.0, 3.0)]  # doctest: +NORMALIZE_WHITESPACE
    [Restart(delay_s=0.0, attempt=1), Restart(delay_s=0.5, attempt=2),
     Restart(delay_s=1.0, attempt=3),
     GiveUp(reason='it exited 4 times within 60 s (at most 3 restarts in 60 s)')]

Some exits are no failure to repair: exit code 0 is a process that was asked to stop
(SIGTERM, ``Admin.Shutdown``: someone stops it, perhaps to restart it by hand), and a GCS
that exits with ``EXIT_STORAGE_LOST`` has waited out its storage already (Redis gone for
good): starting it again cannot help. The head leaves those stopped (``Leave``).

The counts of restarts so far go to the GCS ``kv`` table under ``RESTARTS_KEY`` as JSON
(``RestartCounts``), where ``cellray status``, ``runtime.state.get_head()`` and the
dashboard read them, from any machine.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field

__all__ = ["EXIT_STORAGE_LOST", "GCS_LEAVE_CODES", "LEAVE_CODES", "RESTARTS_KEY", "GiveUp", "Leave",
           "Restart", "RestartBudget", "RestartCounts", "RestartPolicy"]

#: The GCS ``kv`` key under which the head keeps its ``RestartCounts`` (JSON).
RESTARTS_KEY = b"head:restarts"
#: The exit code of a GCS whose storage stayed unreachable (``runtime.gcs.__main__``'s).
EXIT_STORAGE_LOST = 3
#: Exit codes after which the head leaves a process stopped, and why.
LEAVE_CODES: dict[int, str] = {0: "it was asked to stop (exit code 0)"}
#: The same for the GCS.
GCS_LEAVE_CODES: dict[int, str] = {
    **LEAVE_CODES,
    EXIT_STORAGE_LOST: (f"its storage stayed unreachable (exit code {EXIT_STORAGE_LOST}); restarting "
                        "it cannot help until the storage is back"),
}


@dataclass(frozen=True)
class RestartPolicy:
    """How eagerly the head restarts one process that died."""

    #: Wait before the second restart in a row, in seconds (the first is immediate) ...
    backoff_s: float = 0.5
    #: ... doubled for each further one, up to this many seconds.
    backoff_max_s: float = 10.0
    #: Most restarts of one process within ``window_s``; one more exit and the head gives up.
    max_restarts: int = 5
    #: The window, in seconds.
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            raise ValueError(f"need 0 <= backoff_s <= backoff_max_s, got {self.backoff_s} and "
                             f"{self.backoff_max_s}")
        if self.max_restarts < 0 or self.window_s <= 0:
            raise ValueError(f"need max_restarts >= 0 and window_s > 0, got {self.max_restarts} "
                             f"and {self.window_s}")


@dataclass(frozen=True)
class Restart:
    """Start the process again after ``delay_s`` seconds; the ``attempt``-th restart in the window."""

    delay_s: float
    attempt: int


@dataclass(frozen=True)
class Leave:
    """Leave the process stopped: its exit is no failure to repair. ``reason`` is for the log."""

    reason: str


@dataclass(frozen=True)
class GiveUp:
    """Leave the process dead: it died too often. ``reason`` is for the log."""

    reason: str


class RestartBudget:
    """The restarts of one process: ``on_exit(now, code)`` says what to do about an exit.

    ``leave`` maps the exit codes after which the process stays stopped to the reason
    (default ``LEAVE_CODES``; ``GCS_LEAVE_CODES`` for the GCS).
    """

    def __init__(self, policy: RestartPolicy | None = None,
                 leave: dict[int, str] | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self.leave = LEAVE_CODES if leave is None else leave
        #: Restarts decided so far, in all.
        self.total = 0
        self._recent: deque[float] = deque()  # when each restart in the window was decided

    def on_exit(self, now: float, code: int) -> Restart | GiveUp | Leave:
        """The process exited with ``code`` (``Popen.returncode``: -9 for SIGKILL) at ``now``
        (seconds, any monotonic clock), while nobody was stopping the head."""
        if code in self.leave:
            return Leave(self.leave[code])
        p = self.policy
        while self._recent and self._recent[0] <= now - p.window_s:
            self._recent.popleft()
        if len(self._recent) >= p.max_restarts:
            return GiveUp(f"it exited {len(self._recent) + 1} times within {p.window_s:g} s "
                          f"(at most {p.max_restarts} restarts in {p.window_s:g} s)")
        n = len(self._recent)
        delay = 0.0 if n == 0 else min(p.backoff_s * 2 ** (n - 1), p.backoff_max_s)
        self._recent.append(now)
        self.total += 1
        return Restart(delay_s=delay, attempt=n + 1)


@dataclass
class RestartCounts:
    """How many times the head restarted its processes since the cluster started."""

    #: Restarts of the GCS.
    gcs: int = 0
    #: Restarts of each global scheduler replica, by name; replicas never restarted are absent.
    schedulers: dict[str, int] = field(default_factory=dict)
    #: Why the head no longer restarts a process, by name ("gcs", "gs-0"), when it does not.
    not_restarted: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The JSON stored under ``RESTARTS_KEY``."""
        return json.dumps({"gcs": self.gcs, "schedulers": self.schedulers,
                           "not_restarted": self.not_restarted}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> RestartCounts:
        """The counts stored as ``raw``; zero counts for None or anything unreadable."""
        try:
            value = json.loads(raw) if raw else {}
        except ValueError:
            value = {}
        if not isinstance(value, dict):
            value = {}
        gcs = value.get("gcs")
        schedulers = value.get("schedulers")
        left = value.get("not_restarted")
        return cls(
            gcs=gcs if isinstance(gcs, int) else 0,
            schedulers={str(k): v for k, v in schedulers.items() if isinstance(v, int)}
            if isinstance(schedulers, dict) else {},
            not_restarted={str(k): str(v) for k, v in left.items()} if isinstance(left, dict) else {})
