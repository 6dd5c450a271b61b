"""The other nodes as a spilling node sees them: their last heartbeat rows, plus the tasks
spilled their way since. Pure, a part of the local scheduler (``spill.py`` decides with it).

Every row of a peer replaces our guesses about it, except for the tasks spilled for its
sake whose placement has not been answered yet (``in_flight``): its row cannot show them
either, so they stay counted. Decisions look at all peers in a small cluster and at a
random sample of ``SAMPLE`` in a large one, so their cost stays flat as the cluster grows.

Examples
--------
>>> from runtime.protocol import common_pb2
>>> peers = PeerLoads()
>>> busy = peers.row(b"a", common_pb2.NodeLoad(total={"CPU": 2}, available={"CPU": 0}, queue_length=4))
>>> peers.can_start({"CPU": 1}) is None, peers.less_busy({"CPU": 1}, 8, {"CPU": 2}) is busy
(True, True)
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from runtime.node.tasks import Task
from runtime.protocol import common_pb2
from runtime.protocol.resources import fits, how_many_fit

__all__ = ["SAMPLE", "Peer", "PeerLoads", "rounds"]

#: Peers a decision looks at, at most (a random sample of them in a larger cluster).
SAMPLE = 16
#: More tasks than any node runs side by side (a bound for ``how_many_fit``).
_MANY = 1 << 20


def rounds(queue: int, need: Mapping[str, float], total: Mapping[str, float]) -> float:
    """How many rounds of tasks like ``need`` a queue of ``queue`` is, on a node of ``total``."""
    return queue / max(1, how_many_fit(need, total, _MANY))


@dataclass(slots=True)
class Peer:
    """Another node as its last heartbeat row showed it, plus the tasks spilled its way since
    (``in_flight``: those whose placement has not been answered yet)."""

    node_id: bytes
    total: dict[str, float]
    available: dict[str, float] = field(default_factory=dict)
    queue: int = 0
    in_flight: int = 0

    def charge(self, need: Mapping[str, float]) -> None:
        """Count a task spilled its way, until its next row tells the truth."""
        self.in_flight += 1
        if fits(need, self.available):
            for k, v in need.items():
                self.available[k] = self.available.get(k, 0.0) - v
        else:
            self.queue += 1


class PeerLoads:
    """The live peers, by node id (see the module docstring)."""

    __slots__ = ("_charged", "_listed", "_peers")

    def __init__(self) -> None:
        self._peers: dict[bytes, Peer] = {}
        self._listed: list[bytes] | None = None  # their ids, for sampling
        #: Spilled tasks not answered yet -> the peer charged for them.
        self._charged: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self._peers

    def __getitem__(self, node_id: bytes) -> Peer:
        return self._peers[node_id]

    def row(self, node_id: bytes, load: common_pb2.NodeLoad) -> Peer:
        """A peer's new row: it replaces our guesses, but for the spills still in flight."""
        old = self._peers.get(node_id)
        in_flight = old.in_flight if old is not None else 0
        if old is None:
            self._listed = None
        peer = self._peers[node_id] = Peer(node_id, dict(load.total), dict(load.available),
                                           load.queue_length + in_flight, in_flight)
        return peer

    def remove(self, node_id: bytes) -> None:
        """The peer died."""
        if self._peers.pop(node_id, None) is not None:
            self._listed = None

    def any_fits(self, need: Mapping[str, float]) -> bool:
        """True when some peer's total resources hold ``need``."""
        return any(fits(need, p.total) for p in self._peers.values())

    def charge(self, peer: Peer, task: Task) -> None:
        """``task`` spills for ``peer``'s sake: charge it there until the placement is answered."""
        peer.charge(task.resources)
        self._charged[task.spec.task_id] = peer.node_id

    def answered(self, task_id: bytes) -> None:
        """The placement of a spilled task was answered (or never will be): uncharge its peer."""
        node_id = self._charged.pop(task_id, None)
        peer = self._peers.get(node_id) if node_id is not None else None
        if peer is not None and peer.in_flight > 0:
            peer.in_flight -= 1

    def some(self) -> Iterable[Peer]:
        """The peers a decision looks at: all of them, or a random sample of ``SAMPLE``."""
        peers = self._peers
        if len(peers) <= SAMPLE:
            return peers.values()
        listed = self._listed
        if listed is None:
            listed = self._listed = list(peers)
        return [peers[n] for n in random.sample(listed, SAMPLE)]

    def can_start(self, need: Mapping[str, float]) -> Peer | None:
        """A peer whose row (with our charges) shows room for ``need`` now, or None."""
        return next((p for p in self.some() if fits(need, p.available)), None)

    def less_busy(self, need: Mapping[str, float], queued: int, total: Mapping[str, float]) -> Peer | None:
        """The least busy peer that fits ``need``, when it is at least one round of such tasks
        less busy than a node of ``total`` with ``queued`` tasks waiting; else None."""
        best, best_rounds = None, rounds(queued, need, total) - 1.0
        for peer in self.some():
            if not fits(need, peer.total):
                continue
            r = -1.0 if fits(need, peer.available) else rounds(peer.queue, need, peer.total)
            if r <= best_rounds:
                best, best_rounds = peer, r
        return best
