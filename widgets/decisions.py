"""Scheduling decisions over time: the bucketed series behind the Scheduler section's chart.

Pure and bounded: buckets older than the window are dropped as newer ones arrive. Part of
the dashboard's model (``widgets.model`` re-exports ``DecisionSeries``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DecisionSeries"]


@dataclass
class DecisionSeries:
    """Local, spilled and received decisions per node in ``bucket_s`` buckets over ``window_s``.

    Buckets older than the window (measured from the newest time added) are dropped, so
    memory stays bounded however long the dashboard runs.
    """

    bucket_s: float = 5.0
    window_s: float = 300.0
    _buckets: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    _totals: dict[str, list[int]] = field(default_factory=dict)
    _newest: int = 0

    def add(self, node_id: str, t: float, *, local: int = 0, spilled: int = 0, received: int = 0) -> None:
        """Count decisions of ``node_id`` at unix time ``t``."""
        b = int(t // self.bucket_s)
        totals = self._totals.setdefault(node_id, [0, 0, 0])
        totals[0] += local
        totals[1] += spilled
        totals[2] += received
        if b > self._newest:
            self._newest = b
            self._prune()
        if b <= self._newest - self._span():
            return  # older than the window: in the totals only
        cell = self._buckets.setdefault(node_id, {}).setdefault(b, [0, 0, 0])
        cell[0] += local
        cell[1] += spilled
        cell[2] += received

    def _span(self) -> int:
        return max(round(self.window_s / self.bucket_s), 1)

    def _prune(self) -> None:
        oldest = self._newest - self._span()
        for buckets in self._buckets.values():
            for b in [b for b in buckets if b <= oldest]:
                del buckets[b]

    def nodes(self) -> list[str]:
        """Nodes with any decision counted."""
        return list(self._totals)

    def series(self, node_id: str, now: float) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(local, spilled, received) per bucket for the window ending at ``now``, oldest first."""
        end = int(now // self.bucket_s)
        buckets = self._buckets.get(node_id, {})
        span = range(end - self._span() + 1, end + 1)
        cells = [buckets.get(b, (0, 0, 0)) for b in span]
        return tuple(c[0] for c in cells), tuple(c[1] for c in cells), tuple(c[2] for c in cells)

    def totals(self, node_id: str) -> tuple[int, int, int]:
        """(local, spilled, received) decisions of ``node_id`` since the model started."""
        t = self._totals.get(node_id, (0, 0, 0))
        return t[0], t[1], t[2]
