"""The workload: every node's driver submits many short tasks; some nodes are overloaded.

Like the Ray paper's scalability runs, each node has a driver that submits short tasks
(``task_s`` seconds each on average, one CPU) with exponential gaps. A normal node's
driver offers ``load`` of the node's capacity (``cpus / task_s`` tasks per second); the
first ``hot_share`` of the nodes are *hot*: their drivers offer ``hot_load`` of it, more
than the node can run, so their local schedulers spill the excess to the global
schedulers. Every driver submits for the same window, ``tasks_per_node / normal rate``
seconds, so a hot node submits ``hot_load / load`` times as many tasks::

    normal node   rate = load     * cpus / task_s   tasks = tasks_per_node
    hot node      rate = hot_load * cpus / task_s   tasks = tasks_per_node * hot_load / load

Task durations are uniform in ``task_s * (1 ± jitter)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Workload"]


@dataclass(frozen=True)
class Workload:
    """What the drivers submit (see the module docstring).

    Examples
    --------
    >>> w = Workload(tasks_per_node=100, cpus=4, task_s=0.01, load=0.5, hot_share=0.1, hot_load=2.0)
    >>> w.rate(hot=False), w.count(hot=True), w.window_s(), w.hot_nodes(20)
    (200.0, 400, 0.5, 2)
    """

    #: Tasks a normal node's driver submits.
    tasks_per_node: int = 100
    #: CPUs of every node (each task takes one).
    cpus: int = 4
    #: Mean task duration, in seconds.
    task_s: float = 0.010
    #: Task durations are uniform in ``task_s * (1 ± jitter)``.
    jitter: float = 0.5
    #: A normal node's offered load, as a share of its capacity.
    load: float = 0.5
    #: Share of the nodes that are hot (at least one when > 0 and there are 2+ nodes).
    hot_share: float = 0.1
    #: A hot node's offered load, as a share of its capacity (> 1: it must spill).
    hot_load: float = 2.0

    def __post_init__(self) -> None:
        if (self.tasks_per_node < 1 or self.cpus < 1 or not self.task_s > 0 or not 0 <= self.jitter < 1
                or not self.load > 0 or not 0 <= self.hot_share <= 1 or not self.hot_load > 0):
            raise ValueError(f"invalid workload {self}: need tasks_per_node >= 1, cpus >= 1, task_s > 0, "
                             "0 <= jitter < 1, load > 0, 0 <= hot_share <= 1, hot_load > 0")

    def rate(self, hot: bool) -> float:
        """Tasks per second a driver submits."""
        return (self.hot_load if hot else self.load) * self.cpus / self.task_s

    def count(self, hot: bool) -> int:
        """Tasks a driver submits in all."""
        return max(1, round(self.tasks_per_node * self.rate(hot) / self.rate(False)))

    def window_s(self) -> float:
        """Seconds over which every driver submits."""
        return self.tasks_per_node / self.rate(False)

    def hot_nodes(self, nodes: int) -> int:
        """How many of ``nodes`` are hot (the first ones)."""
        if self.hot_share <= 0 or nodes < 2:
            return 0
        return min(nodes - 1, max(1, round(nodes * self.hot_share)))

    def offered_rate(self, nodes: int) -> float:
        """Tasks per second all drivers offer together."""
        hot = self.hot_nodes(nodes)
        return hot * self.rate(True) + (nodes - hot) * self.rate(False)

    def total(self, nodes: int) -> int:
        """Tasks all drivers submit together."""
        hot = self.hot_nodes(nodes)
        return hot * self.count(True) + (nodes - hot) * self.count(False)

    def duration(self, rng: random.Random) -> float:
        """One task's duration."""
        return self.task_s * (1.0 + rng.uniform(-self.jitter, self.jitter))
