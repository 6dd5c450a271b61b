"""Spread placement: the least loaded node, ignoring where the inputs live.

A node's load is the number of tasks like this one it runs or queues per slot::

    load = (in use of the main resource / the task's demand of it + queue_length) / slots

``slots`` is as in ``base.slots`` (the CPU count for 1-CPU tasks). A node where the task
fits right now always beats one where it would queue; ties go to a random node.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from runtime.scheduler.policies.base import Choice, InputLike, fits, main_resource, slots
from runtime.scheduler.state import NodeView

__all__ = ["SpreadPolicy"]

_TIE = 1e-9


class SpreadPolicy:
    """Pick the least loaded candidate (see the module docstring). Ties go round-robin (the
    next node after the last one picked, by id), so a burst of tasks that do not change the
    loads (no resources, or between two heartbeats of a busy cluster) still lands on every
    node in turn; ``rng`` picks where the first round starts.

    Examples
    --------
    >>> SpreadPolicy().load(NodeView(b"a", "h:1", total={"CPU": 4}, available={"CPU": 2},
    ...                              queue_length=2), {"CPU": 1})
    1.0
    """

    name = "spread"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._last: bytes | None = None

    def load(self, node: NodeView, resources: Mapping[str, float]) -> float:
        """Tasks like this one that ``node`` runs or queues, per slot."""
        key = main_resource(resources)
        need = resources.get(key, 0.0) or 1.0
        in_use = max(0.0, node.total.get(key, 0.0) - node.available.get(key, 0.0))
        return (in_use / need + max(0, node.queue_length)) / slots(node, resources)

    def choose(self, candidates: Sequence[NodeView], resources: Mapping[str, float],
               inputs: Sequence[InputLike]) -> Choice:
        scored = []
        for node in sorted(candidates, key=lambda n: n.node_id):  # a stable order for the seeded rng
            queues = not fits(resources, node.available)
            scored.append(((queues, self.load(node, resources)), node))
        best_queues, best_load = min(s[0] for s in scored)
        ties = [s for s in scored if s[0][0] == best_queues and s[0][1] <= best_load + _TIE]
        if self._last is None:
            (queues, load), node = self._rng.choice(ties)
        else:
            last = self._last
            (queues, load), node = next((t for t in ties if t[1].node_id > last), ties[0])
        self._last = node.node_id
        return Choice(node, load, f"spread: load {load:.2f} per slot"
                                  + (" (queues)" if queues else " (fits now)"))
