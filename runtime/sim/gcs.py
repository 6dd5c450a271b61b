"""The simulated GCS: the real ``GcsState`` on one :class:`Server` per process.

cellray runs its GCS as one process (``gcs_processes=1``) holding its storage shards; the
paper's design puts each shard in its own process (``gcs_processes=N``: one ``GcsState``
per process, and each key goes to ``shard_of(key, N)``, the real shard function). Each
``ReportEvents`` batch and each ``Heartbeat`` is a job on the process holding the keys;
the charged call applies it and drains the changes it made (``take_changes``), as the
servicer does. A batch split over several processes is acknowledged when all are done.

Publishing a change of the ``nodes`` table costs ``publish_s`` per subscriber (the replicas,
and every node when nodes follow the table, as ``Peers.watch_nodes`` does): it is charged
to the process, not run. Replicas get each change as a message; nodes read them in
batches from a :class:`RowFeed` (each node on its own tick), which delivers the same rows
with at most a tick of extra delay, without one simulation event per row per node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from runtime.sim import adapter
from runtime.sim.adapter import Change, GcsState
from runtime.sim.loop import CostModel, EventLoop, Network, Server
from runtime.sim.metrics import Book

__all__ = ["RowFeed", "SimGcs", "Subscriber"]


class Subscriber(Protocol):
    """A replica following the ``nodes`` table."""

    index: int

    def rows(self, changes: list[Change], at: float) -> None: ...


class RowFeed:
    """Rows of the ``nodes`` table as nodes see them: published in order, each visible from
    its arrival time (the GCS's send time plus the network delay)."""

    __slots__ = ("_arrivals", "_rows")

    def __init__(self) -> None:
        self._arrivals: list[float] = []
        self._rows: list[tuple[bytes, Any]] = []

    def post(self, at: float, row: tuple[bytes, Any]) -> None:
        self._arrivals.append(at)
        self._rows.append(row)

    def read(self, since: int, now: float) -> tuple[list[tuple[bytes, Any]], int]:
        """Rows posted after the first ``since`` that have arrived by ``now``, and the new
        position."""
        arrivals, end = self._arrivals, since
        n = len(arrivals)
        while end < n and arrivals[end] <= now:
            end += 1
        return self._rows[since:end], end

    def __len__(self) -> int:
        return len(self._rows)


class SimGcs:
    """The GCS processes (see the module docstring).

    Parameters
    ----------
    processes
        GCS processes; 1 is cellray's deployment (one process, ``storage_shards`` inside).
    publish_s
        Seconds charged per change of the ``nodes`` table per subscriber.
    node_subscribers
        Nodes that follow the ``nodes`` table (each is charged ``publish_s`` per change).
    feed
        Where rows go for the nodes (None: nodes do not follow the table).
    """

    def __init__(self, *, loop: EventLoop, net: Network, cost: CostModel, book: Book, processes: int,
                 storage_shards: int, publish_s: float, node_subscribers: int,
                 feed: RowFeed | None) -> None:
        if processes < 1:
            raise ValueError(f"the GCS needs at least one process, got {processes}")
        self.loop, self.net, self.book = loop, net, book
        self.processes = processes
        self.servers = [Server(loop, f"gcs-{k}", "gcs", cost) for k in range(processes)]
        shards = storage_shards if processes == 1 else 1
        self.states: list[GcsState] = [adapter.new_gcs(shards, lambda: loop.now) for _ in range(processes)]
        self.publish_s = publish_s
        self.node_subscribers = node_subscribers
        self.feed = feed
        self.replicas: Sequence[Subscriber] = ()

    def register(self, node_id: bytes, address: str, load: Any) -> None:
        """A node joins (before the run; not charged)."""
        k = adapter.gcs_shard(node_id, self.processes)
        adapter.register_node(self.states[k], adapter.node_row(node_id, address, load))

    def snapshot(self) -> list[Any]:
        """Every row of the ``nodes`` table."""
        return [row for state in self.states for row in adapter.node_rows(state)]

    # ---- calls -----------------------------------------------------------------------

    def report_events(self, src: int, events: list[Any], objects: list[Any], at: float,
                      done: Callable[[], None]) -> None:
        """Node ``src`` sends a ``ReportEvents`` batch at ``at``; ``done()`` runs when the
        acknowledgements (one per GCS process involved) are back."""
        groups = self._split(events, objects)
        left = [len(groups)]

        def acked() -> None:
            left[0] -= 1
            if left[0] == 0:
                done()
        for k, (evs, objs) in groups.items():
            arrive = self.net.arrival(("n", src), ("g", k), at)
            self.loop.call_at(arrive, self._arrives(k, src, evs, objs, acked))

    def _arrives(self, k: int, src: int, events: list[Any], objects: list[Any],
                 acked: Callable[[], None]) -> Callable[[], None]:
        return lambda: self.servers[k].post(lambda: self._report(k, src, events, objects, acked))

    def _split(self, events: list[Any], objects: list[Any]) -> dict[int, tuple[list[Any], list[Any]]]:
        if self.processes == 1:
            return {0: (events, objects)}
        groups: dict[int, tuple[list[Any], list[Any]]] = {}
        for ev in events:
            groups.setdefault(adapter.gcs_shard(ev.task_id, self.processes), ([], []))[0].append(ev)
        for up in objects:
            groups.setdefault(adapter.gcs_shard(up.object_id, self.processes), ([], []))[1].append(up)
        return groups or {0: ([], [])}

    def _report(self, k: int, src: int, events: list[Any], objects: list[Any],
                acked: Callable[[], None]) -> None:
        server, state = self.servers[k], self.states[k]
        changes = server.call("report_events", lambda: adapter.report_events(state, events, objects))
        self._publish(k, changes)
        self.book.applied(len(events), adapter.terminal_tasks(events))
        self.loop.call_at(self.net.arrival(("g", k), ("n", src), server.free_at), acked)

    def heartbeat(self, src: int, node_id: bytes, load: Any, at: float) -> None:
        """Node ``src`` sends its heartbeat at ``at``."""
        k = adapter.gcs_shard(node_id, self.processes)
        arrive = self.net.arrival(("n", src), ("g", k), at)
        self.loop.call_at(arrive, lambda: self.servers[k].post(lambda: self._beat(k, node_id, load)))

    def _beat(self, k: int, node_id: bytes, load: Any) -> None:
        state = self.states[k]
        self._publish(k, self.servers[k].call("heartbeat", lambda: adapter.heartbeat(state, node_id, load)))

    def _publish(self, k: int, changes: list[Change]) -> None:
        nodes = adapter.nodes_changes(changes)
        if not nodes:
            return
        server = self.servers[k]
        subscribers = len(self.replicas) + self.node_subscribers
        server.charge("publish", self.publish_s * subscribers * len(nodes))
        t = server.free_at
        for r in self.replicas:
            r.rows(nodes, self.net.arrival(("g", k), ("r", r.index), t))
        feed = self.feed
        if feed is not None:
            at = t + self.net.delay_s
            for c in nodes:
                row = adapter.row_load(c)
                if row is not None:
                    feed.post(at, row)
