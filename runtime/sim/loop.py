"""The discrete-event core: simulated time, single-server processes, network delays.

:class:`EventLoop` keeps a heap of ``(time, sequence, callback)``; ties run in the order
they were scheduled, so a run is a pure function of its inputs and seed.

:class:`Server` is one process of the simulated cluster (a node manager, a scheduler
replica, a GCS process): a single server with a FIFO queue of jobs. A job runs when the
server is free; every real state-machine call it makes goes through :meth:`Server.call`,
which times the call and charges its cost (a :class:`CostModel` of the measured seconds)
to the server. What the job sends leaves at ``free_at``, the end of the charges so far,
and the next job starts there. The sim's own bookkeeping is never charged::

    arrival ──► queue ──► job starts at max(arrival, free_at)
                          call 1 ─ measured c1 ─┐
                          call 2 ─ measured c2 ─┤ free_at = start + c1 + c2
                          messages leave at free_at (+ network delay)

:class:`Network` draws a delay per message (base ± jitter from a seeded ``Random``) and
keeps each link FIFO, as a gRPC stream is.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

__all__ = ["CostModel", "EventLoop", "FixedCost", "MeasuredCost", "Network", "Server"]

T = TypeVar("T")


class EventLoop:
    """Simulated time and the callbacks due at each instant.

    Examples
    --------
    >>> loop, seen = EventLoop(), []
    >>> loop.call_at(2.0, lambda: seen.append(loop.now))
    >>> loop.call_at(1.0, lambda: seen.append(loop.now))
    >>> loop.run()
    True
    >>> seen
    [1.0, 2.0]
    """

    __slots__ = ("_heap", "_seq", "_stopped", "events", "now")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._stopped = False
        #: The current simulated time, in seconds.
        self.now = 0.0
        #: Callbacks run so far.
        self.events = 0

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at simulated time ``when`` (now, if ``when`` is past)."""
        self._seq += 1
        heapq.heappush(self._heap, (when if when > self.now else self.now, self._seq, fn))

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` ``delay`` simulated seconds from now."""
        self.call_at(self.now + delay, fn)

    def stop(self) -> None:
        """End :meth:`run` after the callback that is running."""
        self._stopped = True

    def run(self, until: float = math.inf) -> bool:
        """Run callbacks in time order until :meth:`stop`, none is left, or the next one
        is due after ``until``; True unless it ended on ``until``."""
        heap, pop = self._heap, heapq.heappop
        self._stopped = False
        while heap and not self._stopped:
            if heap[0][0] > until:
                self.now = until
                return False
            when, _, fn = pop(heap)
            self.now = when
            self.events += 1
            fn()
        return True


class CostModel(Protocol):
    """Seconds of server time to charge for one call of ``call`` on a ``kind`` of server
    (``node``, ``replica``, ``gcs``) that took ``measured_s`` here, as read on ``timer``
    (None: calls are not timed, and ``measured_s`` is 0)."""

    @property
    def timer(self) -> Callable[[], float] | None: ...

    def __call__(self, kind: str, call: str, measured_s: float) -> float: ...


def _timer_overhead(timer: Callable[[], float], samples: int = 2001) -> float:
    """Seconds one reading of ``timer`` adds to an interval it measures (the median)."""
    gaps = []
    for _ in range(samples):
        t0 = timer()
        gaps.append(timer() - t0)
    gaps.sort()
    return gaps[len(gaps) // 2]


@dataclass(frozen=True)
class MeasuredCost:
    """Charge the measured time of each call, times ``scale`` (the default model).

    ``clock`` is ``"process"`` (CPU time of this process: other jobs on the machine do not
    inflate it; the default) or ``"wall"`` (``perf_counter``). The clock's own overhead,
    measured once, is taken off each reading. ``scale`` maps this machine's speed onto
    another (0.5: a machine twice as fast).
    """

    scale: float = 1.0
    clock: str = "process"
    _overhead: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.clock not in ("process", "wall") or not self.scale > 0:
            raise ValueError(f"MeasuredCost needs clock 'process' or 'wall' and scale > 0, got "
                             f"clock={self.clock!r}, scale={self.scale!r}")
        object.__setattr__(self, "_overhead", _timer_overhead(self.timer))

    @property
    def timer(self) -> Callable[[], float]:
        return time.process_time if self.clock == "process" else time.perf_counter

    def __call__(self, kind: str, call: str, measured_s: float) -> float:
        return max(0.0, measured_s - self._overhead) * self.scale


@dataclass(frozen=True)
class FixedCost:
    """Charge a constant per call, ignoring the measured time: runs are then repeatable
    to the last digit for a seed (tests use it).

    The constant is looked up as ``"kind.call"`` in ``per_call``, then ``kind`` in
    ``per_kind``, then ``default_s``.

    Examples
    --------
    >>> cost = FixedCost(default_s=1e-5, per_kind={"replica": 1e-3})
    >>> cost("replica", "place", 0.123), cost("node", "submit", 0.5)
    (0.001, 1e-05)
    """

    default_s: float = 10e-6
    per_kind: Mapping[str, float] = field(default_factory=dict)
    per_call: Mapping[str, float] = field(default_factory=dict)

    @property
    def timer(self) -> None:
        return None

    def __call__(self, kind: str, call: str, measured_s: float) -> float:
        found = self.per_call.get(f"{kind}.{call}")
        if found is not None:
            return found
        return self.per_kind.get(kind, self.default_s)


class Server:
    """One simulated process: a FIFO of jobs served one at a time (see the module docstring).

    Parameters
    ----------
    loop
        The event loop.
    name, kind
        ``node-3`` / ``node``, ``gs-0`` / ``replica``, ``gcs-0`` / ``gcs``.
    cost
        Turns the measured time of a call into the seconds charged.
    """

    __slots__ = ("_armed", "_counting", "_queue", "_timer", "busy_s", "calls", "cost", "free_at", "jobs",
                 "kind", "loop", "max_backlog", "max_wait_s", "name", "window", "window_busy_s")

    def __init__(self, loop: EventLoop, name: str, kind: str, cost: CostModel) -> None:
        self.loop = loop
        self.name = name
        self.kind = kind
        self.cost = cost
        self._timer = cost.timer
        self._queue: deque[tuple[float, Callable[[], None]]] = deque()
        self._armed = False
        #: When the job running now ends, given what it was charged so far (after a job:
        #: when the server is free again).
        self.free_at = 0.0
        #: Seconds charged in all.
        self.busy_s = 0.0
        #: Jobs served.
        self.jobs = 0
        #: Longest queue seen.
        self.max_backlog = 0
        #: Longest a job waited in the queue before it started.
        self.max_wait_s = 0.0
        #: call name -> [count, seconds charged].
        self.calls: dict[str, list[float]] = {}
        #: Seconds charged to jobs that started inside ``window`` (start, end).
        self.window = (math.inf, math.inf)
        self.window_busy_s = 0.0
        self._counting = False

    def post(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (arrived now); it runs when the jobs before it are done."""
        queue = self._queue
        queue.append((self.loop.now, job))
        if len(queue) > self.max_backlog:
            self.max_backlog = len(queue)
        if not self._armed:
            self._armed = True
            self.loop.call_at(self.free_at, self._serve)

    def backlog(self) -> int:
        """Jobs waiting (the one running not counted)."""
        return len(self._queue)

    def lag_s(self) -> float:
        """The longest any job has waited, counting those still queued now."""
        if not self._queue:
            return self.max_wait_s
        return max(self.max_wait_s, self.loop.now - self._queue[0][0])

    def _serve(self) -> None:
        arrived, job = self._queue.popleft()
        now = self.free_at = self.loop.now
        if now - arrived > self.max_wait_s:
            self.max_wait_s = now - arrived
        self._counting = self.window[0] <= now < self.window[1]
        self.jobs += 1
        job()
        if self._queue:
            self.loop.call_at(self.free_at, self._serve)
        else:
            self._armed = False

    def call(self, name: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a real state-machine call), charge its cost, return its result."""
        timer = self._timer
        if timer is None:
            out = fn()
            self.charge(name, self.cost(self.kind, name, 0.0))
            return out
        t0 = timer()
        out = fn()
        self.charge(name, self.cost(self.kind, name, timer() - t0))
        return out

    def charge(self, name: str, seconds: float) -> None:
        """Charge ``seconds`` of work named ``name`` to the job running now."""
        self.free_at += seconds
        self.busy_s += seconds
        if self._counting:
            self.window_busy_s += seconds
        entry = self.calls.get(name)
        if entry is None:
            self.calls[name] = [1, seconds]
        else:
            entry[0] += 1
            entry[1] += seconds

    def mean_cost(self, name: str) -> float | None:
        """Mean seconds charged per ``name`` call (None: never called)."""
        entry = self.calls.get(name)
        return entry[1] / entry[0] if entry else None


class Network:
    """Message delays: ``delay_s`` ± ``jitter_s`` between processes, ``local_s`` between a
    node and its own drivers and workers; FIFO per link.

    Examples
    --------
    >>> net = Network(random.Random(0), delay_s=1e-4, jitter_s=0.0, local_s=1e-5)
    >>> round(net.arrival("a", "b", 1.0) - 1.0, 9)
    0.0001
    """

    __slots__ = ("_last", "_rng", "delay_s", "jitter_s", "local_s")

    def __init__(self, rng: random.Random, *, delay_s: float, jitter_s: float, local_s: float) -> None:
        if delay_s < 0 or jitter_s < 0 or local_s < 0 or jitter_s > delay_s:
            raise ValueError(f"network delays must be >= 0 with jitter <= delay, got delay_s={delay_s}, "
                             f"jitter_s={jitter_s}, local_s={local_s}")
        self._rng = rng
        self.delay_s, self.jitter_s, self.local_s = delay_s, jitter_s, local_s
        self._last: dict[tuple[Hashable, Hashable], float] = {}

    def arrival(self, src: Hashable, dst: Hashable, sent: float) -> float:
        """When a message sent at ``sent`` from ``src`` reaches ``dst`` (after the last one
        sent on that link)."""
        jitter = self.jitter_s
        t = sent + self.delay_s + (self._rng.uniform(-jitter, jitter) if jitter else 0.0)
        key = (src, dst)
        last = self._last.get(key, 0.0)
        if t < last:
            t = last
        self._last[key] = t
        return t
