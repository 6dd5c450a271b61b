"""Locality-aware placement (the default): least estimated wait plus input transfer time.

For each candidate node::

    wait     = 0                                        if the task fits in what is available now
             = (queue_length + 1) / slots * task_time   otherwise
    transfer = bytes of inputs with no copy on the node / bandwidth
    cost     = wait + transfer

``slots`` is how many such tasks the node runs side by side (its capacity in the task's
main resource ÷ the task's demand of it, at least 1: the CPU count for 1-CPU tasks, the
GPU count for 1-GPU tasks; see ``base.slots``). ``task_time`` is an average task
duration (default 10 ms) and ``bandwidth`` the node-to-node copy rate (default 1 GB/s).
The node of least cost wins; ties go to a random one (``rng``, seedable for tests).

So a task whose 50 MB input lives on node B goes to B unless another node would start it
more than 50 ms sooner, and a burst of tasks fills free slots before any queue.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from runtime.config import Settings
from runtime.scheduler.policies.base import Choice, InputLike, fits, remote_bytes, slots
from runtime.scheduler.state import NodeView

__all__ = ["DEFAULT_BANDWIDTH", "DEFAULT_TASK_TIME_S", "LocalityPolicy"]

#: Average task duration assumed when estimating how long a queue takes to drain
#: (the default of ``Settings.task_time_s``; the daemon passes its settings' value).
DEFAULT_TASK_TIME_S = Settings.task_time_s
#: Bytes per second assumed for pulling an input from another node (``Settings.bandwidth``).
DEFAULT_BANDWIDTH = Settings.bandwidth
#: Costs this close (seconds) count as a tie.
_TIE_S = 1e-9


class LocalityPolicy:
    """Minimise estimated wait + estimated input transfer time (see the module docstring).

    Parameters
    ----------
    task_time_s
        Average task duration in seconds (> 0).
    bandwidth
        Bytes per second between nodes (> 0).
    rng
        Breaks ties; pass ``random.Random(seed)`` for reproducible choices.

    Examples
    --------
    >>> policy = LocalityPolicy(rng=random.Random(0))
    >>> policy.wait_s(NodeView(b"a", "h:1", total={"CPU": 2}, available={"CPU": 0}, queue_length=3),
    ...               {"CPU": 1})
    0.02
    """

    name = "locality"

    def __init__(self, task_time_s: float = DEFAULT_TASK_TIME_S, bandwidth: float = DEFAULT_BANDWIDTH,
                 rng: random.Random | None = None) -> None:
        if not task_time_s > 0 or not bandwidth > 0:
            raise ValueError(f"LocalityPolicy needs task_time_s > 0 and bandwidth > 0, "
                             f"got task_time_s={task_time_s!r}, bandwidth={bandwidth!r}")
        self.task_time_s = task_time_s
        self.bandwidth = bandwidth
        self._rng = rng or random.Random()

    def wait_s(self, node: NodeView, resources: Mapping[str, float]) -> float:
        """Estimated seconds before ``node`` could start the task."""
        if fits(resources, node.available):
            return 0.0
        return (max(0, node.queue_length) + 1) / slots(node, resources) * self.task_time_s

    def transfer_s(self, node: NodeView, inputs: Sequence[InputLike]) -> float:
        """Estimated seconds to pull the inputs ``node`` holds no copy of."""
        return remote_bytes(node.node_id, inputs) / self.bandwidth

    def choose(self, candidates: Sequence[NodeView], resources: Mapping[str, float],
               inputs: Sequence[InputLike]) -> Choice:
        scored = []
        for node in sorted(candidates, key=lambda n: n.node_id):  # a stable order for the seeded rng
            wait, transfer = self.wait_s(node, resources), self.transfer_s(node, inputs)
            scored.append((wait + transfer, wait, transfer, node))
        best = min(s[0] for s in scored)
        cost, wait, transfer, node = self._rng.choice([s for s in scored if s[0] <= best + _TIE_S])
        return Choice(node, cost, f"locality: est. wait {wait * 1e3:.1f} ms + "
                                  f"input transfer {transfer * 1e3:.1f} ms")
