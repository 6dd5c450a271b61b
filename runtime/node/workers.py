"""The node's worker table: processes starting, idle, busy, and what each one runs.

A worker runs a stack of *frames*: the task it was given, and above it tasks run nested
inside it while the ones below wait in ``get`` (see ``lending.py``). Tasks *sent ahead*
to a busy worker (pipelining) wait in its ``queued`` deque and start, in order, when the
running one ends, on the resources it held. Idle workers are handed out last-in first-out
(the most recently used is the warmest), and surplus ones are reaped after a while.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

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
    #: When it was sent to its worker, as a count (larger is newer): the memory monitor
    #: kills the worker of the newest task first.
    order: int = 0
    #: A task sent ahead: its worker began to run it (reported RUNNING once, then).
    started: bool = False


@dataclass(frozen=True, slots=True)
class Departed:
    """A worker whose process ended, and what it still had (``WorkerTable.exited``)."""

    worker_id: bytes
    pid: int
    #: It was an actor's process.
    was_actor: bool
    #: Tasks sent ahead to it that never started.
    queued: list[Frame]
    #: Its stack of frames, innermost last.
    frames: list[Frame]
    #: Its session's client id (b"" before it connected).
    client_id: bytes = b""


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
    #: What it ran: "" nothing yet, "cpu" tasks without GPUs, "gpu" tasks with GPUs. A
    #: worker runs one kind only (a GPU task in a worker that ran CPU work would find its
    #: CUDA state wrong; as Ray's pool keeps them apart).
    kind: str = ""
    #: Tasks run per function, for functions with ``max_calls`` (None: none such ran).
    calls: dict[bytes, int] | None = None
    #: It reached a function's ``max_calls``: it takes no more work and stops when idle.
    retiring: bool = False
    #: The key of the runtime env it was started with ("" none): it runs only tasks and
    #: actors of that key (``runtime.api._runtime_env``).
    env_key: str = ""

    @property
    def is_actor(self) -> bool:
        """It is an actor's process (it ran the actor's constructor)."""
        return self.state == WorkerState.ACTOR


class WorkerTable:
    """Every worker of the node, the idle ones, and how many are starting."""

    __slots__ = ("_by_client", "_clock", "_running_on", "_sent", "_starting_env", "idle",
                 "max_starting", "pipeline_depth", "retired", "starting", "workers")

    def __init__(self, *, max_starting: int, pipeline_depth: int, clock: Callable[[], float]) -> None:
        self.workers: dict[bytes, Worker] = {}
        #: Idle workers, the most recently used last (handed out first).
        self.idle: list[Worker] = []
        #: Workers asked for (StartWorker) or started, not connected yet.
        self.starting = 0
        #: Of those, how many per runtime env key (only keys other than "").
        self._starting_env: dict[str, int] = {}
        #: Workers that reached a ``max_calls`` and went idle: the node stops them.
        self.retired: list[bytes] = []
        #: Most workers starting at once.
        self.max_starting = max_starting
        #: Most tasks sent ahead to one busy worker.
        self.pipeline_depth = pipeline_depth
        #: task id -> worker running it (to find a blocked parent that can run its children).
        self._running_on: dict[bytes, bytes] = {}
        #: client id of a connected worker's session -> the worker.
        self._by_client: dict[bytes, Worker] = {}
        #: Frames made so far (each one's ``order``).
        self._sent = 0
        self._clock = clock

    def get(self, worker_id: bytes) -> Worker | None:
        return self.workers.get(worker_id)

    def of_client(self, client_id: bytes) -> Worker | None:
        """The live worker whose session is ``client_id`` (None for a driver or a gone one)."""
        return self._by_client.get(client_id)

    def running(self, task_id: bytes) -> bytes | None:
        """The id of the worker task ``task_id`` was sent to, while it is not over."""
        return self._running_on.get(task_id)

    def __len__(self) -> int:
        return len(self.workers)

    # ---- life of a process ---------------------------------------------------------

    def to_start(self, want: int, env_key: str = "") -> int:
        """How many workers of runtime env ``env_key`` to ask for when ``want`` more could
        run now: at most ``max_starting`` (of any env) on their way at once."""
        if not self._starting_env:
            return min(want, self.max_starting) - self.starting
        mine = (self._starting_env.get(env_key, 0) if env_key
                else self.starting - sum(self._starting_env.values()))
        return min(want - mine, self.max_starting - self.starting)

    def shortfall(self, target: int) -> int:
        """Workers missing for ``target`` of them (actors not counted) to be alive or on
        their way: the warm pool, after some died."""
        alive = sum(1 for w in self.workers.values() if w.state != WorkerState.ACTOR)
        return max(0, target - alive)

    def asked(self, env_key: str = "") -> None:
        """A StartWorker action went out: one more worker (of runtime env ``env_key``) is
        on its way."""
        self.starting += 1
        if env_key:
            self._starting_env[env_key] = self._starting_env.get(env_key, 0) + 1

    def started(self, worker_id: bytes, counted: bool = True, env_key: str = "") -> None:
        """The pool started ``worker_id`` (for runtime env ``env_key``); ``counted`` when a
        StartWorker asked for it."""
        self.workers[worker_id] = Worker(worker_id, env_key=env_key)
        if not counted:
            self.asked(env_key)

    def _not_starting(self, w: Worker) -> None:
        self.starting -= 1
        key = w.env_key
        if key:
            left = self._starting_env.get(key, 0) - 1
            if left > 0:
                self._starting_env[key] = left
            else:
                self._starting_env.pop(key, None)

    def connected(self, worker_id: bytes, pid: int, client_id: bytes) -> Worker:
        """The worker's session opened: it is idle now."""
        w = self.workers.get(worker_id)
        if w is None:  # a worker the pool did not start (should not happen): adopt it
            w = self.workers[worker_id] = Worker(worker_id)
        elif w.state == WorkerState.STARTING:
            self._not_starting(w)
        w.pid, w.client_id, w.state = pid, client_id, _IDLE
        w.idle_since = self._clock()
        self.idle.append(w)
        self._by_client[client_id] = w
        return w

    def disconnected(self, client_id: bytes) -> None:
        """The session ``client_id`` of a worker ended (its exit is reported apart)."""
        self._by_client.pop(client_id, None)

    def exited(self, worker_id: bytes) -> Departed | None:
        """Forget a worker whose process ended: it is dead, and what it ran is handed back.
        None when it was not known (or dead already)."""
        w = self.workers.pop(worker_id, None)
        if w is None or w.state == WorkerState.DEAD:
            return None
        if w.state == WorkerState.STARTING:
            self._not_starting(w)
        if w in self.idle:
            self.idle.remove(w)
        self._forget_client(w)
        gone = Departed(w.worker_id, w.pid, w.state == WorkerState.ACTOR, list(w.queued), w.frames,
                        w.client_id)
        w.state = WorkerState.DEAD
        w.queued.clear()
        w.frames = []
        return gone

    def _forget_client(self, w: Worker) -> None:
        if w.client_id and self._by_client.get(w.client_id) is w:
            del self._by_client[w.client_id]

    def become_actor(self, w: Worker) -> None:
        """``w`` ran an actor's constructor: it is that actor's process from now on."""
        w.state = WorkerState.ACTOR

    def set_idle(self, w: Worker) -> None:
        w.state = _IDLE
        w.idle_since = self._clock()
        self.idle.append(w)

    def pop_idle(self, kind: str = "", env_key: str = "") -> Worker | None:
        """The most recently used idle worker that may run work of ``kind`` ("cpu" or
        "gpu": one that ran the same kind, or nothing yet) in runtime env ``env_key`` (one
        started for it), taken off the idle list."""
        idle = self.idle
        while idle and idle[-1].state != _IDLE:
            idle.pop()  # no longer idle: dropped lazily
        for i in range(len(idle) - 1, -1, -1):
            w = idle[i]
            if w.state == _IDLE and (not kind or w.kind in ("", kind)) and w.env_key == env_key:
                del idle[i]
                return w
        return None

    def reap(self, keep: int, idle_s: float,
             owning: Callable[[], Collection[bytes]] = frozenset) -> list[bytes]:
        """Forget and return the workers idle for ``idle_s`` seconds beyond the ``keep``
        most recently used (those stay warm), except those whose session is among
        ``owning()`` (they own something still in use, which would die with them)."""
        if len(self.idle) <= keep:
            return []
        now = self._clock()
        # Oldest idle first; the most recently used (end of the list) stay.
        victims = [w for w in self.idle[:len(self.idle) - keep] if now - w.idle_since >= idle_s]
        if victims:
            owners = owning()
            victims = [w for w in victims if w.client_id not in owners]
        for w in victims:
            self.idle.remove(w)
            w.state = WorkerState.DEAD
            del self.workers[w.worker_id]
            self._forget_client(w)
        return [w.worker_id for w in victims]

    # ---- frames --------------------------------------------------------------------

    def assign(self, w: Worker, task_id: bytes, resources: dict[str, float],
               gpu_ids: list[int]) -> Frame:
        """``w`` runs task ``task_id`` now, on ``resources`` (on top of its stack)."""
        w.state = _BUSY
        self._sent += 1
        frame = Frame(task_id, resources, gpu_ids=gpu_ids, order=self._sent)
        w.frames.append(frame)
        self._running_on[task_id] = w.worker_id
        return frame

    def send_ahead(self, w: Worker, task_id: bytes) -> Frame:
        """Task ``task_id`` waits in busy ``w`` to start when its running task ends."""
        self._sent += 1
        frame = Frame(task_id, {}, order=self._sent)
        w.queued.append(frame)
        self._running_on[task_id] = w.worker_id
        return frame

    def task_over(self, task_id: bytes) -> None:
        """Task ``task_id`` is over: no worker runs it any more."""
        self._running_on.pop(task_id, None)

    def drop_ahead(self, w: Worker, task_id: bytes) -> bool:
        """Take task ``task_id`` off the tasks sent ahead to ``w``; False when not there."""
        for f in w.queued:
            if f.task_id == task_id:
                w.queued.remove(f)
                return True
        return False

    @staticmethod
    def promote_next(w: Worker, ended: Frame) -> Frame | None:
        """The frame ``ended`` came off ``w``: when it was the last and held its CPUs, the
        next task sent ahead starts on its resources (its frame is returned). None: nothing
        took them."""
        if w.frames or not w.queued or ended.lent:
            return None
        nxt = w.queued.popleft()
        nxt.resources, nxt.gpu_ids = ended.resources, ended.gpu_ids
        w.frames.append(nxt)
        return nxt

    def next_ahead_starts(self, w: Worker) -> Frame | None:
        """The task sent ahead to ``w`` that its worker begins to run now, not reported yet:
        the worker runs them in order, nested while every task on its stack waits in
        ``get`` (``runtime.api._objects``). None when it runs none now."""
        if not w.queued or not w.frames or self.stack_depth(w) == 0:
            return None
        nxt = w.queued[0]
        if nxt.started:
            return None
        nxt.started = True
        return nxt

    def settle(self, w: Worker) -> bool:
        """A task of ``w`` ended and gave its resources back: ``w`` is idle when nothing is
        left on it. True when tasks are still stacked on it (it may take a nested one)."""
        if w.frames:
            return True
        if not w.queued:
            if w.retiring:  # ran its function's max_calls: it goes instead
                w.state = WorkerState.DEAD
                self.workers.pop(w.worker_id, None)
                self._forget_client(w)
                self.retired.append(w.worker_id)
            else:
                self.set_idle(w)
        return False

    def count_call(self, w: Worker, function_id: bytes, max_calls: int) -> None:
        """``w`` gets a task of a function limited to ``max_calls`` runs per worker."""
        calls = w.calls if w.calls is not None else {}
        w.calls = calls
        calls[function_id] = n = calls.get(function_id, 0) + 1
        if n >= max_calls:
            w.retiring = True

    def take_retired(self) -> list[bytes]:
        """Workers that reached a ``max_calls`` and went idle since the last call: to stop."""
        out, self.retired = self.retired, []
        return out

    @staticmethod
    def release(frame: Frame) -> tuple[dict[str, float], list[int], float]:
        """What ``frame`` held, to give back to the node: (resources, GPU ids, CPUs it had
        lent already); the frame holds no GPU and has lent nothing after."""
        held = frame.resources, frame.gpu_ids, frame.lent
        if frame.gpu_ids:
            frame.gpu_ids = []
        if frame.lent:
            frame.lent = 0.0
        return held

    @staticmethod
    def frame_for(w: Worker, task_id: bytes) -> Frame | None:
        """The frame of ``task_id`` on ``w``, else its innermost; None when it runs nothing."""
        frames = w.frames
        if not frames:
            return None
        return next((f for f in frames if f.task_id == task_id), frames[-1])

    @staticmethod
    def block(frame: Frame) -> float | None:
        """``frame``'s task waits in ``get``: the CPUs it lends back (None: blocked already)."""
        if frame.blocked:
            return None
        frame.blocked = True
        frame.lent = cpu = frame.resources.get("CPU", 0.0)
        return cpu

    @staticmethod
    def unblock(frame: Frame) -> float | None:
        """``frame``'s task runs again: the CPUs it takes back (None: it was not blocked)."""
        if not frame.blocked:
            return None
        frame.blocked = False
        lent, frame.lent = frame.lent, 0.0
        return lent

    def stack_depth(self, w: Worker) -> int:
        """How many frames ``w`` runs when all of them are blocked in ``get`` (it could take
        a nested task); 0 when it runs nothing or one of them runs."""
        frames = w.frames
        if not frames or w.state != _BUSY or not all(f.blocked for f in frames):
            return 0
        return len(frames)

    @staticmethod
    def innermost(w: Worker) -> bytes:
        """The task on top of ``w``'s stack (b"" when it runs nothing)."""
        return w.frames[-1].task_id if w.frames else b""

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
                        function_of: Callable[[bytes], bytes | None],
                        env_key: str = "") -> Worker | None:
        """A busy worker running one plain task of shape ``need`` (in runtime env
        ``env_key``), to send another ahead to.

        Only more of the same function (``function_of`` a task id): a uniform batch of
        short tasks is what pipelining is for; anything else could wait behind a long task.
        """
        depth = self.pipeline_depth
        best: Worker | None = None
        for w in self.workers.values():
            if (w.state == _BUSY and len(w.frames) == 1 and not w.frames[0].blocked and not w.retiring
                    and len(w.queued) < depth and w.frames[0].resources == need
                    and w.env_key == env_key
                    and (best is None or len(w.queued) < len(best.queued))
                    and function_of(w.frames[0].task_id) == function_id):
                best = w
        return best

    def sent_ahead(self) -> int:
        """Tasks sent ahead to busy workers, not started yet."""
        return sum(len(w.queued) for w in self.workers.values())

    def summary(self) -> dict[str, Any]:
        """Workers starting, idle, and each one's state and frames, for ``statistics()``."""
        return {"starting": self.starting, "idle": len(self.idle), "workers": self.describe()}

    def describe(self) -> dict[str, tuple[str, list[tuple[str, bool, float]]]]:
        """Each worker's state and frames, for ``statistics()``."""
        return {w.worker_id.hex()[:6]: (w.state, [(f.task_id.hex()[:6], f.blocked, f.lent)
                                                  for f in w.frames])
                for w in self.workers.values()}
