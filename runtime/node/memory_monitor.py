"""The node's memory monitor: past a threshold of the machine's memory, kill one worker.

Every ``memory_monitor_ms`` the manager reads the machine's memory (:func:`read_memory`:
used = total - available) and hands the reading to :meth:`MemoryMonitor.check`. Past
``memory_usage_threshold`` the monitor picks one worker and kills it (a ``KillWorker``
action), then waits for that worker's exit before it picks another, however often it is
checked: the memory of a killed process is free only once it is gone. Ray's policy, in
order (:func:`choose_victim`)::

    1. the worker of the newest task that can be retried (``max_retries`` != 0)
    2. the worker of the newest task that cannot
    3. the newest actor (an actor loses its state; its ``max_restarts`` decide, as in Ray)

"Newest" is the task sent to its worker last (``Frame.order``): it has the least work to
lose. A task whose worker was killed for memory runs again up to ``task_oom_retries``
times (-1: without end), counted apart from ``max_retries``, and only when its
``max_retries`` is not 0, as in Ray; then it fails with :class:`OutOfMemoryError`, whose
message names the node's memory used and total and the worker's pid and RSS.

Pure like the rest of the local scheduler: the reading and the RSS of a pid are given to
it, never read here (the manager passes :func:`read_memory` and :func:`rss_of`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from runtime import _ids, config
from runtime.exceptions import OutOfMemoryError
from runtime.node.actions import Action, KillWorker
from runtime.node.tasks import Task, TaskHost, requeue
from runtime.node.workers import Worker, WorkerTable
from runtime.protocol.states import WorkerState

logger = logging.getLogger(__name__)

_GIB, _MIB = 2**30, 2**20

#: Ranks of victims, the lowest killed first.
RETRIABLE, NOT_RETRIABLE, ACTOR = 0, 1, 2

_WHY = {
    RETRIABLE: "the newest retriable task running there (those are killed first, actors last)",
    NOT_RETRIABLE: "the newest task running there; none of them could be retried",
    ACTOR: "the newest actor there; no task was running",
}


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """The machine's memory, in bytes: ``used`` = total - available."""

    used: int
    total: int

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0


def read_memory() -> MemoryReading:
    """The machine's memory now (psutil; "available" counts reclaimable caches as free)."""
    vm = psutil.virtual_memory()
    return MemoryReading(used=vm.total - vm.available, total=vm.total)


def rss_of(pid: int) -> int:
    """The resident memory of process ``pid`` in bytes, 0 when it cannot be read."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return 0


def size(n: int) -> str:
    """``n`` bytes for a message: "23.1 GiB", "600 MiB"."""
    return f"{n / _GIB:.1f} GiB" if n >= _GIB else f"{n / _MIB:.0f} MiB"


def percents(fraction: float, threshold: float) -> tuple[str, str]:
    """Both as percents, "96.3 %", "95.0 %", with as many decimals (up to 4) as it takes
    for them to read differently."""
    digits = 1
    while digits < 4 and f"{fraction * 100:.{digits}f}" == f"{threshold * 100:.{digits}f}":
        digits += 1
    return f"{fraction * 100:.{digits}f} %", f"{threshold * 100:.{digits}f} %"


@dataclass(frozen=True, slots=True)
class Kill:
    """A worker the monitor killed, and the memory that made it do so."""

    worker_id: bytes
    pid: int
    #: The worker's resident memory when it was picked, in bytes.
    rss: int
    reading: MemoryReading
    threshold: float
    #: Its rank in the policy (``RETRIABLE``, ``NOT_RETRIABLE``, ``ACTOR``).
    rank: int

    def describe(self, node_id: bytes) -> str:
        """Where memory stood: "node 3f2a… used 23.1 GiB of 24.0 GiB memory (96.3 % > threshold
        95.0 %), and its worker (pid 1234) used 12.0 GiB (RSS)"."""
        r = self.reading
        used, threshold = percents(r.fraction, self.threshold)
        return (f"node {_ids.short(node_id)} used {size(r.used)} of {size(r.total)} memory "
                f"({used} > threshold {threshold}), and its worker (pid {self.pid}) used "
                f"{size(self.rss)} (RSS)")


def rank(w: Worker, task: Callable[[bytes], Task | None]) -> int:
    """Where worker ``w`` comes in the policy: an actor's process (or one running an
    actor's constructor) last; a task that cannot be retried after those that can."""
    if w.state == WorkerState.ACTOR:
        return ACTOR
    worst = RETRIABLE
    for frame in w.frames:
        t = task(frame.task_id)
        if t is None:
            continue  # over already; its result is on its way
        if t.spec.actor_creation:
            return ACTOR
        if t.spec.max_retries == 0:
            worst = NOT_RETRIABLE
    return worst


def choose_victim(workers: Iterable[Worker],
                  task: Callable[[bytes], Task | None]) -> tuple[Worker, int] | None:
    """The worker to kill first and its rank: the lowest rank, then the newest task
    (``Frame.order``); None when no worker runs anything. Idle workers are never picked:
    killing one frees little and fails nothing, but the pool would start it again."""
    best: tuple[int, int] | None = None
    victim: tuple[Worker, int] | None = None
    for w in workers:
        if not w.frames or w.pid <= 0 or w.state not in (WorkerState.BUSY, WorkerState.ACTOR):
            continue
        r = rank(w, task)
        key = (r, -max(f.order for f in w.frames))
        if best is None or key < best:
            best, victim = key, (w, r)
    return victim


class MemoryMonitor:
    """The node's memory policy (see the module docstring): ``check`` kills one worker past
    the threshold; ``killed`` and ``retry_or_fail`` decide the fate of its tasks."""

    __slots__ = ("_emit", "_host", "_node_id", "_warned", "_workers", "oom_retries", "pending",
                 "threshold")

    def __init__(self, node_id: bytes, host: TaskHost, workers: WorkerTable,
                 emit: Callable[[Action], None], settings: config.Settings) -> None:
        self._node_id = node_id
        self._host = host
        self._workers = workers
        self._emit = emit
        self.threshold = settings.memory_usage_threshold
        self.oom_retries = settings.task_oom_retries
        #: The last kill, until its worker's exit is seen (one kill at a time).
        self.pending: Kill | None = None
        #: Said already that nothing could be killed (said again once under the threshold).
        self._warned = False

    def check(self, reading: MemoryReading, rss: Callable[[int], int]) -> Kill | None:
        """Given the machine's memory now: past the threshold, kill the worker the policy
        picks (``rss`` gives a pid's resident bytes, for the message). Returns the new kill,
        or None (under the threshold, a kill still under way, or nothing to kill)."""
        pending = self.pending
        if pending is not None:
            if self._workers.get(pending.worker_id) is not None:
                return None  # its memory is free only once it is gone
            self.pending = None
        if reading.fraction <= self.threshold:
            self._warned = False
            return None
        picked = choose_victim(self._workers.workers.values(), self._host.task)
        if picked is None:
            if not self._warned:
                self._warned = True
                logger.warning("memory monitor: %s of %s memory used (over %.1f %%) but no "
                               "worker runs anything here to kill", size(reading.used),
                               size(reading.total), self.threshold * 100)
            return None
        w, r = picked
        kill = self.pending = Kill(w.worker_id, w.pid, rss(w.pid), reading, self.threshold, r)
        names = [t.spec.name + "()" for f in w.frames if (t := self._host.task(f.task_id))]
        logger.warning("memory monitor: %s; killing that worker, which runs %s: %s",
                       kill.describe(self._node_id), ", ".join(names) or "nothing", _WHY[r])
        self._emit(KillWorker(w.worker_id))
        return kill

    def killed(self, worker_id: bytes) -> bool:
        """True when the monitor killed worker ``worker_id`` (asked when it exits)."""
        return self.pending is not None and self.pending.worker_id == worker_id

    def retry_or_fail(self, task: Task) -> None:
        """``task`` ran in the worker the monitor killed: it runs again while its OOM retries
        last (``max_retries`` untouched), else it fails with ``OutOfMemoryError``."""
        kill = self.pending
        assert kill is not None, "retry_or_fail without a kill"
        spec = task.spec
        limit = self.oom_retries if spec.max_retries != 0 else 0
        task.oom_kills += 1
        if limit < 0 or task.oom_kills <= limit:
            of = "without end" if limit < 0 else f"of {limit}"
            requeue(self._host, task, f"killed by the memory monitor: {kill.describe(self._node_id)}; "
                                      f"OOM retry {task.oom_kills} {of}", kill.pid)
            return
        self._host.fail(task, self.error(task, kill, limit))

    def error(self, task: Task, kill: Kill, limit: int) -> OutOfMemoryError:
        """The error of ``task`` killed for memory with its OOM retries (``limit``) spent."""
        spec = task.spec
        if spec.max_retries == 0:
            retries = ("It is not retried: its max_retries is 0 (a task with max_retries != 0 "
                       f"runs again up to task_oom_retries={self.oom_retries} times for memory)")
        else:
            retries = (f"It was killed {task.oom_kills} time(s), its task_oom_retries={limit} are "
                       f"spent (they do not count against its max_retries={spec.max_retries})")
        r = kill.reading
        message = (
            f"Task {spec.name}() (task {_ids.short(spec.task_id)}) was killed by the memory "
            f"monitor: {kill.describe(self._node_id)}. It was {_WHY[kill.rank]}. {retries}. "
            f"Use less memory in the task, run fewer such tasks at once on a node (ask each "
            f"for more num_cpus), or give the node more memory; the threshold is "
            f"{config.env_name('memory_usage_threshold')}={self.threshold}, the OOM retries "
            f"{config.env_name('task_oom_retries')}={self.oom_retries}. The node's log "
            f"(logs/node-*.log in the session directory) has every kill.")
        return OutOfMemoryError(message, task_id=spec.task_id.hex(), node_id=self._node_id.hex(),
                                pid=kill.pid, memory_used=r.used, memory_total=r.total,
                                threshold=self.threshold, rss=kill.rss)
