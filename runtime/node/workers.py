"""The node's worker table: processes starting, idle, busy, and what each one runs.

A worker runs a stack of *frames*: the task it was given, and above it tasks run nested
inside it while the ones below wait in ``get`` (see ``lending.py``). Tasks *sent ahead*
to a busy worker (pipelining) wait in its ``queued`` deque and start, in order, when the
running one ends, on the resources it held. Idle workers are handed out last-in first-out
(the most recently used is the warmest), and surplus ones are reaped after a while.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.protocol.states import WorkerState

# Members bound once: reading an enum member costs ~80 ns on Python 3.11, and these are
# read on the path of every task.
_BUSY = WorkerState.BUSY
_IDLE = WorkerState.IDLE


@dataclass(slots=True)
class Frame:
    task_id: bytes
    resources: dict[str, float]
    blocked: bool = False
    lent: float = 0.0
    #: GPU indices reserved for the task (whole or a fraction of one GPU).
    gpu_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Worker:
    worker_id: bytes
    pid: int = 0
    client_id: bytes = b""
    state: WorkerState = WorkerState.STARTING
    frames: list[Frame] = field(default_factory=list)
    #: Tasks sent ahead to this busy worker (pipelined): they start, in order, when the
    #: running one ends, and take over its resources then.
    queued: deque[Frame] = field(default_factory=deque)
    #: When it last became idle (for reaping surplus idle workers).
    idle_since: float = 0.0


class WorkerTable:
    """Every worker of the node, the idle ones, and how many are starting."""

    __slots__ = ("_clock", "idle", "max_starting", "pipeline_depth", "running_on", "starting",
                 "workers")

    def __init__(self, *, max_starting: int, pipeline_depth: int, clock: Callable[[], float]) -> None:
        self.workers: dict[bytes, Worker] = {}
        #: Idle workers, the most recently used last (handed out first).
        self.idle: list[Worker] = []
        #: Workers asked for (StartWorker) or started, not connected yet.
        self.starting = 0
        #: Most workers starting at once.
        self.max_starting = max_starting
        #: Most tasks sent ahead to one busy worker.
        self.pipeline_depth = pipeline_depth
        #: task id -> worker running it (to find a blocked parent that can run its children).
        self.running_on: dict[bytes, bytes] = {}
        self._clock = clock

    def get(self, worker_id: bytes) -> Worker | None:
        return self.workers.get(worker_id)

    def __len__(self) -> int:
        return len(self.workers)

    # ---- life of a process ---------------------------------------------------------

    def asked(self) -> None:
        """A StartWorker action went out: one more worker is on its way."""
        self.starting += 1

    def started(self, worker_id: bytes, counted: bool = True) -> None:
        """The pool started ``worker_id``; ``counted`` when a StartWorker asked for it."""
        self.workers[worker_id] = Worker(worker_id)
        if not counted:
            self.starting += 1

    def connected(self, worker_id: bytes, pid: int, client_id: bytes) -> Worker:
        """The worker's session opened: it is idle now."""
        w = self.workers.get(worker_id)
        if w is None:  # a worker the pool did not start (should not happen): adopt it
            w = self.workers[worker_id] = Worker(worker_id)
        elif w.state == WorkerState.STARTING:
            self.starting -= 1
        w.pid, w.client_id, w.state = pid, client_id, _IDLE
        w.idle_since = self._clock()
        self.idle.append(w)
        return w

    def exited(self, worker_id: bytes) -> Worker | None:
        """Forget a worker whose process ended; None when it was not known (or dead)."""
        w = self.workers.pop(worker_id, None)
        if w is None or w.state == WorkerState.DEAD:
            return None
        if w.state == WorkerState.STARTING:
            self.starting -= 1
        if w in self.idle:
            self.idle.remove(w)
        return w

    def set_idle(self, w: Worker) -> None:
        w.state = _IDLE
        w.idle_since = self._clock()
        self.idle.append(w)

    def pop_idle(self) -> Worker | None:
        """The most recently used idle worker, taken off the idle list."""
        idle = self.idle
        while idle:
            w = idle.pop()
            if w.state == _IDLE:
                return w
        return None

    def reap(self, keep: int, idle_s: float) -> list[bytes]:
        """Forget and return the workers idle for ``idle_s`` seconds beyond the ``keep``
        most recently used (those stay warm)."""
        if len(self.idle) <= keep:
            return []
        now = self._clock()
        # Oldest idle first; the most recently used (end of the list) stay.
        victims = [w for w in self.idle[:len(self.idle) - keep] if now - w.idle_since >= idle_s]
        for w in victims:
            self.idle.remove(w)
            w.state = WorkerState.DEAD
            del self.workers[w.worker_id]
        return [w.worker_id for w in victims]

    # ---- frames --------------------------------------------------------------------

    @staticmethod
    def pop_frame(w: Worker, task_id: bytes) -> Frame | None:
        """Take the frame of ``task_id`` off ``w``: by id, not position, since a nested
        task may finish just as another is pushed on top."""
        for i in range(len(w.frames) - 1, -1, -1):
            if w.frames[i].task_id == task_id:
                return w.frames.pop(i)
        # A task sent ahead that the worker ran early (nested, while the one before it
        # waited in get): it held no resources.
        for f in w.queued:
            if f.task_id == task_id:
                w.queued.remove(f)
                f.resources = {}
                return f
        return None

    def pipeline_worker(self, need: dict[str, float], function_id: bytes,
                        function_of: Callable[[bytes], bytes | None]) -> Worker | None:
        """A busy worker running one plain task of shape ``need``, to send another ahead to.

        Only more of the same function (``function_of`` a task id): a uniform batch of
        short tasks is what pipelining is for; anything else could wait behind a long task.
        """
        depth = self.pipeline_depth
        best: Worker | None = None
        for w in self.workers.values():
            if (w.state == _BUSY and len(w.frames) == 1 and not w.frames[0].blocked
                    and len(w.queued) < depth and w.frames[0].resources == need
                    and (best is None or len(w.queued) < len(best.queued))
                    and function_of(w.frames[0].task_id) == function_id):
                best = w
        return best

    def sent_ahead(self) -> int:
        """Tasks sent ahead to busy workers, not started yet."""
        return sum(len(w.queued) for w in self.workers.values())

    def describe(self) -> dict[str, tuple[str, list[tuple[str, bool, float]]]]:
        """Each worker's state and frames, for ``statistics()``."""
        return {w.worker_id.hex()[:6]: (w.state, [(f.task_id.hex()[:6], f.blocked, f.lent)
                                                  for f in w.frames])
                for w in self.workers.values()}
