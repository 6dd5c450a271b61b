"""What a run measured: every task's story (the :class:`Book`) and the figures of a run
(:class:`SimResult`), built from the book and the servers' charges.

A task is *done* when its result reaches its owner (the driver on its home node).
Figures are taken in the *steady window*, the last three quarters of the drivers'
submission window (the first quarter warms queues and views up): throughput is tasks done
per second in it, scheduling latency the time from a driver's submit to a worker starting
the task, for tasks submitted in it, and a server's *utilization* the share of it the
server spent working. A server at ~100% is saturated: work queues in front of it. The GCS
may be (nothing waits for it: its tables just fall behind, ``gcs_lag_s``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass

from runtime.sim.loop import Server

__all__ = ["Book", "KindLoad", "SimResult", "TaskRecord", "percentile"]


class TaskRecord:
    """One task: where it was submitted, what happened to it and when (seconds)."""

    __slots__ = ("deliveries", "done", "duration", "home", "ran_on", "runs", "spilled", "spills", "started",
                 "starts", "submitted")

    def __init__(self, home: int, duration: float, submitted: float) -> None:
        self.home = home  #: index of the node whose driver submitted it
        self.duration = duration  #: seconds a worker runs it
        self.submitted = submitted
        self.started = -1.0  #: first start on a worker
        self.starts = 0  #: times a worker started it
        self.runs = 0  #: times a worker finished it
        self.ran_on = -1  #: node of its last start
        self.done = -1.0  #: its result reached the owner (first time)
        self.deliveries = 0  #: times its result reached the owner
        self.spills = 0  #: times its home spilled it
        self.spilled = -1.0  #: when its home first spilled it


class Book:
    """Every task's record, and the counts that say when a run is over.

    ``on_complete`` is called once every task is done at its owner and no node has task
    events the GCS has not applied yet.
    """

    def __init__(self, on_complete: Callable[[], None]) -> None:
        self.tasks: dict[bytes, TaskRecord] = {}
        self.expected = 0
        self.done_count = 0
        self.first_submit = math.inf
        self.last_done = 0.0
        #: Task-ending events the GCS applied; task events it applied in all.
        self.recorded = 0
        self.events_applied = 0
        self._reporting = 0
        self._on_complete = on_complete

    def add(self, task_id: bytes, home: int, duration: float, now: float) -> None:
        self.tasks[task_id] = TaskRecord(home, duration, now)
        if now < self.first_submit:
            self.first_submit = now

    def started(self, task_id: bytes, node: int, now: float) -> float:
        """A worker on ``node`` starts the task: its duration."""
        rec = self.tasks[task_id]
        if rec.starts == 0:
            rec.started = now
        rec.starts += 1
        rec.ran_on = node
        return rec.duration

    def ran(self, task_id: bytes) -> None:
        self.tasks[task_id].runs += 1

    def spilled(self, task_id: bytes, now: float) -> None:
        rec = self.tasks[task_id]
        if not rec.spills:
            rec.spilled = now
        rec.spills += 1

    def done(self, task_id: bytes, now: float) -> None:
        rec = self.tasks.get(task_id)
        if rec is None:
            return
        rec.deliveries += 1
        if rec.deliveries == 1:
            rec.done = now
            self.done_count += 1
            self.last_done = now
            self._check()

    def applied(self, events: int, ended: Sized) -> None:
        """The GCS applied ``events`` task events, of which those ending the tasks ``ended``."""
        self.events_applied += events
        self.recorded += len(ended)

    def reporter_busy(self) -> None:
        """A node has task events on their way to the GCS."""
        self._reporting += 1

    def reporter_idle(self) -> None:
        """A node's task events are all applied by the GCS."""
        self._reporting -= 1
        self._check()

    def complete(self) -> bool:
        return self.done_count >= self.expected and self._reporting == 0

    def _check(self) -> None:
        if self.complete():
            self._on_complete()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0-100) of ``sorted_values`` (nan when empty).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 99)
    (2.0, 4.0)
    """
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class KindLoad:
    """The servers of one kind (``node``, ``replica``, ``gcs``): how busy, how far behind."""

    kind: str
    count: int
    max_util: float  #: the busiest server's share of the steady window it spent working
    mean_util: float
    busiest: str  #: name of the busiest server
    max_backlog: int  #: longest queue any of them had
    max_wait_s: float  #: longest a job waited in any of their queues (queued ones counted)
    #: call name -> mean seconds charged per call, over all servers of the kind.
    call_costs: dict[str, float]
    #: call name -> calls over all servers of the kind.
    call_counts: dict[str, int]
    #: call name -> mean seconds charged per call on the busiest server.
    busiest_costs: dict[str, float]

    @classmethod
    def of(cls, kind: str, servers: Sequence[Server]) -> KindLoad:
        """The figures of ``servers``, whose ``window`` was the steady window."""
        utils = [s.window_busy_s / (s.window[1] - s.window[0]) for s in servers]
        top = max(range(len(servers)), key=lambda i: utils[i])
        totals: dict[str, list[float]] = {}
        for s in servers:
            for name, (n, secs) in s.calls.items():
                t = totals.setdefault(name, [0, 0.0])
                t[0] += n
                t[1] += secs
        return cls(kind, len(servers), utils[top], sum(utils) / len(utils), servers[top].name,
                   max(s.max_backlog for s in servers), max(s.lag_s() for s in servers),
                   {k: v[1] / v[0] for k, v in totals.items() if v[0]},
                   {k: int(v[0]) for k, v in totals.items()},
                   {k: v[1] / v[0] for k, v in servers[top].calls.items() if v[0]})


@dataclass(frozen=True)
class SimResult:
    """The figures of one run.

    Throughput and latency are measured on the *steady window*: the last three quarters of
    the drivers' submission window (the first quarter warms queues and views up).
    """

    nodes: int
    replicas: int
    gcs_processes: int
    tasks: int  #: tasks submitted
    done: int  #: tasks whose result reached their owner by the end of the run
    spilled: int  #: tasks spilled at least once
    ran_elsewhere: int  #: tasks that ran on a node other than their home
    window_s: float  #: length of the steady window, simulated seconds
    throughput: float  #: tasks done per simulated second in the steady window
    offered: float  #: tasks per second the drivers offered
    spill_rate: float  #: tasks spilled per second in the steady window
    spilled_throughput: float  #: spilled tasks done per second in the steady window
    latency_p50_s: float  #: submit to start, of tasks submitted in the steady window (inf:
    latency_p99_s: float  #: more of them than that never started before the run ended)
    makespan_s: float  #: first submission to last result (nan when not every task is done)
    elapsed_s: float  #: simulated seconds the run lasted
    gcs_lag_s: float  #: longest a call waited in a GCS queue
    events_applied: int  #: task events the GCS applied
    heartbeats_per_node_s: float  #: heartbeats each node sends per second
    loads: dict[str, KindLoad]  #: by kind
    complete: bool  #: every task done and every event applied
    wall_s: float  #: real seconds the run took here
    events: int  #: simulation events run

    @property
    def spilled_share(self) -> float:
        return self.spilled / self.tasks if self.tasks else 0.0

    def bottleneck(self, threshold: float = 0.9) -> str:
        """The on-path server (replica or node) busy at least ``threshold`` of the time, the
        busiest such, else ``"none"``. The GCS is judged apart: nothing waits for it."""
        on_path = [self.loads[k] for k in ("replica", "node") if k in self.loads]
        top = max(on_path, key=lambda k: k.max_util)
        return top.busiest if top.max_util >= threshold else "none"

    def cost(self, kind: str, call: str) -> float:
        """Mean seconds charged per ``call`` on servers of ``kind`` (nan: never called)."""
        k = self.loads.get(kind)
        return k.call_costs.get(call, math.nan) if k is not None else math.nan
