"""A simulated node manager: the real ``LocalScheduler`` on a :class:`Server`, with fake
workers and a driver.

Each event the real node manager feeds its state (a submission, a worker's result, a
forwarded task, a scheduler's answer, peers' rows) is a job on the node's server: the call
is timed and charged, then the actions it made are carried out in simulated time, as
``runtime/node/dispatch.py`` and the outlets behind it carry them out for real::

    Send execute    the worker starts the task (local hop), runs it for its duration, and
                    reports its result (local hop); tasks sent ahead wait in the worker
    Send object     the driver has the result (the task is done for its owner); it drops
                    its reference a moment later (``update_refs``)
    StartWorker     the pool registers the worker at once; it connects after worker_start_s
    ReportEvent     batched with ObjectLocation, sent to the GCS every event_flush_ms, one
                    batch in flight at a time (``GcsReporter``)
    Spill           Schedule calls to the replicas in random order, at most
                    max_spills_in_flight of those that may run at home (``Peers._spill``)
    ReportHome      results to the home node; FreeRemote, Pull: to the peer
    KillWorker, StopWorker   the worker goes away
    anything else   counted in ``ignored`` (actors and logs are not in the workload)

Heartbeats (``load()`` every heartbeat_ms) go to the GCS; the rows the GCS publishes of
the other nodes come back in batches every ``row_tick_s`` (``Peers.watch_nodes``).
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from runtime.sim import adapter
from runtime.sim.adapter import LocalScheduler, Settings, Spill
from runtime.sim.loop import CostModel, EventLoop, Network, Server
from runtime.sim.metrics import Book

__all__ = ["NodeFabric", "SimNode"]

#: Every task runs the same function (so tasks may be sent ahead to busy workers).
FUNCTION_ID = b"sim-short-task-fn!!!"

Event = Callable[[LocalScheduler], None]
Answer = Callable[[Any], None]


class NodeFabric(Protocol):
    """What a node reaches of the rest of the simulated cluster."""

    def node_at(self, address: str) -> SimNode: ...
    def node_of(self, node_id: bytes) -> SimNode: ...
    def replicas(self) -> int: ...
    def schedule(self, replica: int, home: SimNode, action: Spill, at: float, answer: Answer) -> None: ...
    def report_events(self, node: SimNode, events: list[Any], objects: list[Any], at: float,
                      done: Callable[[], None]) -> None: ...
    def heartbeat(self, node: SimNode, load: Any, at: float) -> None: ...
    def peer_rows(self, since: int, now: float) -> tuple[list[Any], int]: ...


class _Worker:
    __slots__ = ("busy", "client_id", "queue", "worker_id")

    def __init__(self, worker_id: bytes, client_id: bytes) -> None:
        self.worker_id = worker_id
        self.client_id = client_id
        self.queue: deque[bytes] = deque()  # tasks sent to it, the running one first
        self.busy = False


class SimNode:
    """One node: its real local scheduler, its server, workers and driver (see the module
    docstring)."""

    def __init__(self, index: int, *, cpus: int, settings: Settings, loop: EventLoop, net: Network,
                 cost: CostModel, book: Book, fabric: NodeFabric, rng: random.Random,
                 worker_start_s: float, row_tick_s: float, follow_rows: bool) -> None:
        self.index = index
        self.node_id = adapter.sim_id(b"n", index)
        self.address = f"node-{index}"
        self.cpus = cpus
        self.loop, self.net, self.book, self.fabric, self.rng = loop, net, book, fabric, rng
        self.server = Server(loop, f"node-{index}", "node", cost)
        self.state = adapter.new_node(self.node_id, cpus, settings, clock=lambda: loop.now)
        self.driver_id = adapter.sim_id(b"d", index)
        self._settings = settings
        self._worker_start_s = worker_start_s
        self._row_tick_s = row_tick_s
        self._follow_rows = follow_rows
        self._rows_seen = 0
        self.workers: dict[bytes, _Worker] = {}
        self._next_worker = 0
        self._events: list[Any] = []
        self._objects: list[Any] = []
        self._flush_armed = self._flushing = self._reporting = False
        self._phase = rng.random()  # where in each period this node's timers fire
        self._spilling = 0
        self._spill_queue: deque[Spill] = deque()
        self._drops: list[bytes] = []
        #: The driver: tasks to submit, per second, their durations; tasks submitted so far.
        self._driver: tuple[int, float, Callable[[random.Random], float]] = (0, 1.0, lambda rng: 0.0)
        self._submitted = 0
        #: Actions of kinds the workload never needs, by class name.
        self.ignored: Counter[str] = Counter()
        self._table: dict[type, Callable[[Any, float], None]] = {
            adapter.Send: self._send, adapter.StartWorker: self._start_worker,
            adapter.KillWorker: self._kill_worker, adapter.StopWorker: self._stop_worker,
            adapter.ReportEvent: self._event, adapter.ObjectLocation: self._object,
            adapter.Spill: self._spill, adapter.ReportHome: self._report_home,
            adapter.FreeRemote: self._free_remote, adapter.Pull: self._pull,
        }

    # ---- setting up (not charged: the cluster is up before the run starts) -----------

    def boot(self, prestart: int) -> None:
        """Connect the driver and ``prestart`` workers, and tell the node schedulers exist."""
        state = self.state
        adapter.connect_driver(state, self.driver_id)
        for _ in range(prestart):
            w = self._new_worker()
            adapter.start_worker(state, w.worker_id, counted=False)
            adapter.connect_worker(state, w.client_id, w.worker_id, 1000 + self._next_worker)
        adapter.set_schedulers(state)
        state.take_actions()

    def know_peers(self, rows: Sequence[Any]) -> None:
        """The first snapshot of the ``nodes`` table."""
        adapter.peer_rows(self.state, rows)
        self.state.take_actions()

    def start(self, count: int, rate: float, duration: Callable[[random.Random], float]) -> None:
        """Start the driver (``count`` tasks at ``rate`` per second) and the timers."""
        loop = self.loop
        if count > 0:
            self._driver = (count, rate, duration)
            loop.call_at(self.rng.expovariate(rate), self._submit_next)
        hb = self._settings.heartbeat_ms / 1000.0
        loop.call_at(self._phase * hb, self._heartbeat)
        if self._follow_rows:
            loop.call_at(self._phase * self._row_tick_s, self._rows_tick)

    # ---- jobs ----------------------------------------------------------------------

    def deliver(self, at: float, name: str, event: Event,
                then: Callable[[float], None] | None = None) -> None:
        """``event`` reaches the node at ``at``; ``then(t)`` after it, with the time its
        actions left."""
        self.loop.call_at(at, lambda: self.server.post(lambda: self._job(name, event, then)))

    def _job(self, name: str, event: Event, then: Callable[[float], None] | None = None) -> None:
        state = self.state

        def run() -> list[Any]:
            event(state)
            return state.take_actions()
        self._carry(self.server.call(name, run))
        if then is not None:
            then(self.server.free_at)

    def _carry(self, actions: list[Any]) -> None:
        table, t = self._table, self.server.free_at
        for a in actions:
            handler = table.get(type(a))
            if handler is None:
                self.ignored[type(a).__name__] += 1
            else:
                handler(a, t)

    def _local(self, t: float) -> float:
        return t + self.net.local_s

    # ---- the driver ------------------------------------------------------------------

    def _submit_next(self) -> None:
        count, rate, duration = self._driver
        seq = self._submitted = self._submitted + 1
        task_id = adapter.sim_id(b"t", self.index, seq)
        now = self.loop.now
        self.book.add(task_id, self.index, duration(self.rng), now)
        spec = adapter.task_spec(task_id, self.driver_id, FUNCTION_ID, 1.0)
        driver = self.driver_id
        self.deliver(self._local(now), "submit", lambda s: adapter.submit(s, driver, spec))
        if seq < count:
            self.loop.call_later(self.rng.expovariate(rate), self._submit_next)

    def _driver_got(self, object_id: bytes) -> None:
        self.book.done(adapter.task_of(object_id), self.loop.now)
        if not self._drops:
            self.loop.call_later(self.net.local_s, self._drop_refs)
        self._drops.append(object_id)

    def _drop_refs(self) -> None:
        drops, self._drops = self._drops, []
        driver = self.driver_id
        self.server.post(lambda: self._job("update_refs", lambda s: adapter.drop_refs(s, driver, drops)))

    # ---- workers ---------------------------------------------------------------------

    def _new_worker(self) -> _Worker:
        self._next_worker += 1
        n = self._next_worker
        w = _Worker(adapter.sim_id(b"w", self.index, n), adapter.sim_id(b"c", self.index, n))
        self.workers[w.client_id] = w
        return w

    def _start_worker(self, a: Any, t: float) -> None:
        w = self._new_worker()
        self._carry(self.server.call("worker_starting", lambda: self._register(w)))
        pid = 1000 + self._next_worker
        self.deliver(t + self._worker_start_s, "connect",
                     lambda s: adapter.connect_worker(s, w.client_id, w.worker_id, pid))

    def _register(self, w: _Worker) -> list[Any]:
        adapter.start_worker(self.state, w.worker_id, counted=True)
        return self.state.take_actions()

    def _kill_worker(self, a: Any, t: float) -> None:
        w = self._drop_worker(a.worker_id)
        if w is not None:
            worker_id = w.worker_id
            self.deliver(self._local(t), "worker_exited", lambda s: adapter.worker_exited(s, worker_id))

    def _stop_worker(self, a: Any, t: float) -> None:
        self._drop_worker(a.worker_id)

    def _drop_worker(self, worker_id: bytes) -> _Worker | None:
        for cid, w in self.workers.items():
            if w.worker_id == worker_id:
                del self.workers[cid]
                w.queue.clear()
                return w
        return None

    def _send(self, a: Any, t: float) -> None:
        op = a.op
        task_id = adapter.executed_task(op)
        if task_id is not None:
            w = self.workers.get(a.client_id)
            if w is not None:
                self.loop.call_at(self._local(t), lambda: self._worker_takes(w, task_id))
            return
        object_id = adapter.delivered_object(op)
        if object_id is not None and a.client_id == self.driver_id:
            self.loop.call_at(self._local(t), lambda: self._driver_got(object_id))
        else:
            self.ignored["Send"] += 1

    def _worker_takes(self, w: _Worker, task_id: bytes) -> None:
        if self.workers.get(w.client_id) is not w:
            return  # gone meanwhile
        w.queue.append(task_id)
        if not w.busy:
            self._worker_runs(w)

    def _worker_runs(self, w: _Worker) -> None:
        w.busy = True
        task_id = w.queue[0]
        duration = self.book.started(task_id, self.index, self.loop.now)
        self.loop.call_later(duration, lambda: self._worker_done(w, task_id))

    def _worker_done(self, w: _Worker, task_id: bytes) -> None:
        if not w.queue or w.queue[0] != task_id:
            return  # killed meanwhile
        w.queue.popleft()
        self.book.ran(task_id)
        cid = w.client_id
        self.deliver(self._local(self.loop.now), "result", lambda s: adapter.task_done(s, cid, task_id))
        if w.queue:
            self._worker_runs(w)
        else:
            w.busy = False

    # ---- the GCS: events, heartbeats, peers' rows ---------------------------------------

    def _event(self, a: Any, t: float) -> None:
        self._events.append(a.event)
        self._want_flush(t)

    def _object(self, a: Any, t: float) -> None:
        self._objects.append(adapter.object_update(self.node_id, a))
        self._want_flush(t)

    def _want_flush(self, t: float) -> None:
        if not self._reporting:
            self._reporting = True
            self.book.reporter_busy()
        if self._flush_armed or self._flushing:
            return
        self._flush_armed = True
        period = self._settings.event_flush_ms / 1000.0
        phase = self._phase * period
        tick = phase + math.ceil((t - phase) / period) * period
        self.loop.call_at(tick, self._flush)

    def _flush(self) -> None:
        self._flush_armed = False
        events, self._events = self._events, []
        objects, self._objects = self._objects, []
        self._flushing = True
        self.fabric.report_events(self, events, objects, self.loop.now, self._flushed)

    def _flushed(self) -> None:
        self._flushing = False
        if self._events or self._objects:
            self._want_flush(self.loop.now)
        else:
            self._reporting = False
            self.book.reporter_idle()

    def _heartbeat(self) -> None:
        self.server.post(self._beat)
        self.loop.call_later(self._settings.heartbeat_ms / 1000.0, self._heartbeat)

    def _beat(self) -> None:
        state = self.state
        load = self.server.call("load", lambda: adapter.load(state))
        self.fabric.heartbeat(self, load, self.server.free_at)

    def _rows_tick(self) -> None:
        rows, self._rows_seen = self.fabric.peer_rows(self._rows_seen, self.loop.now)
        if rows:
            self.server.post(lambda: self._job("peer_rows", lambda s: adapter.peer_rows(s, rows)))
        self.loop.call_later(self._row_tick_s, self._rows_tick)

    # ---- other nodes and the schedulers ---------------------------------------------------

    def _spill(self, a: Spill, t: float) -> None:
        self.book.spilled(a.task_id, t)
        limited = not adapter.needs_scheduler(a)
        if limited:
            if self._spilling >= self._settings.max_spills_in_flight:
                self._spill_queue.append(a)
                return
            self._spilling += 1
        self._ask(a, self._shuffled(), t, limited)

    def _shuffled(self) -> list[int]:
        order = list(range(self.fabric.replicas()))
        self.rng.shuffle(order)
        return order

    def _ask(self, a: Spill, order: list[int], t: float, limited: bool) -> None:
        if not order:
            if not limited:  # only a scheduler can place it: ask again a heartbeat later
                self.loop.call_at(t + self._settings.heartbeat_ms / 1000.0,
                                  lambda: self._ask(a, self._shuffled(), self.loop.now, limited))
                return
            self._spill_over(t)
            self.deliver(t, "spill_failed", lambda s: adapter.spill_failed(s, a.task_id))
            return
        rest = order[1:]
        self.fabric.schedule(order[0], self, a, t, lambda reply: self._answered(a, rest, limited, reply))

    def _answered(self, a: Spill, rest: list[int], limited: bool, reply: Any) -> None:
        now = self.loop.now
        if reply is None:
            self._ask(a, rest, now, limited)
            return
        if limited:
            self._spill_over(now)
        self.server.post(lambda: self._job("spilled", lambda s: adapter.answer_home(s, a, reply)))

    def _spill_over(self, t: float) -> None:
        """A limited Schedule call ended: the next one waiting may go."""
        self._spilling -= 1
        if self._spill_queue:
            self._spilling += 1
            self._ask(self._spill_queue.popleft(), self._shuffled(), t, True)

    def accept(self, request: Any, at: float, then: Callable[[float], None]) -> None:
        """A replica's ``ForwardTask`` reaches this node at ``at``; ``then(t)`` replies."""
        self.deliver(at, "accept_forwarded", lambda s: adapter.accept_forwarded(s, request), then)

    def _report_home(self, a: Any, t: float) -> None:
        home = self.fabric.node_at(a.address)
        req = adapter.results_from(a, self.address)
        home.deliver(self.net.arrival(self.index, home.index, t), "remote_result",
                     lambda s: adapter.remote_result(s, req))

    def _free_remote(self, a: Any, t: float) -> None:
        peer = self.fabric.node_of(a.node_id)
        ids, me = [a.object_id], self.node_id
        peer.deliver(self.net.arrival(self.index, peer.index, t), "release_remote_holds",
                     lambda s: adapter.release_remote_holds(s, ids, me))

    def _pull(self, a: Any, t: float) -> None:
        source = self.fabric.node_of(a.node_id)
        there = self.net.arrival(self.index, source.index, t)
        back = self.net.arrival(source.index, self.index, there)
        oid = a.object_id
        self.deliver(back, "pulled", lambda s: adapter.pulled(s, source.state, oid))
