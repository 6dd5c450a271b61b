"""The node's resources: totals, what running tasks have not taken, and each GPU's free share.

A task takes its resources when it starts on a worker and gives them back when it ends.
GPUs are also handed out by index: a fraction of a GPU packs onto the lowest-numbered GPU
with room for it; a whole number takes that many entirely free GPUs. A worker blocked in
``get`` lends its task's CPUs back (``lend``) until it runs again (``take_back``).
"""

from __future__ import annotations

from collections.abc import Mapping

from runtime.protocol.resources import EPSILON, fits, how_many_fit


class Resources:
    """Totals, available amounts and per-GPU free fractions of one node."""

    __slots__ = ("available", "gpu_free", "total")

    def __init__(self, total: Mapping[str, float]) -> None:
        #: Total resources of this node.
        self.total: dict[str, float] = dict(total)
        #: What running tasks have not taken (CPU lent by blocked workers is back here).
        self.available: dict[str, float] = dict(total)
        #: Free fraction of each GPU, by index: fractions pack onto the lowest index first.
        self.gpu_free: list[float] = [1.0] * int(total.get("GPU", 0))

    @property
    def cpus(self) -> int:
        """Whole CPUs of the node (at least 1 when it declares none), for default limits."""
        return int(self.total.get("CPU", 1))

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Copies of the ``total`` and ``available`` amounts (for statistics and load)."""
        return {"available": dict(self.available), "total": dict(self.total)}

    def ever_fits(self, need: Mapping[str, float]) -> bool:
        """True when ``need`` fits the node's totals (it can run here some day)."""
        return fits(need, self.total)

    def can_run(self, need: Mapping[str, float]) -> bool:
        """True when ``need`` fits what is available now, GPU indices included."""
        if not fits(need, self.available):
            return False
        gpus = need.get("GPU", 0.0)
        return gpus <= 0 or self.pick_gpus(gpus) is not None

    def how_many_fit(self, need: Mapping[str, float], limit: int) -> int:
        """How many tasks needing ``need`` fit in what is available, at most ``limit``."""
        return how_many_fit(need, self.available, limit)

    def pick_gpus(self, amount: float) -> list[int] | None:
        """GPU indices for ``amount``: a fraction packs onto the first GPU with room; a
        whole number takes that many entirely free GPUs. None when they are not free."""
        free = self.gpu_free
        if amount < 1.0:
            for i, f in enumerate(free):
                if f + EPSILON >= amount:
                    return [i]
            return None
        whole = [i for i, f in enumerate(free) if f > 1.0 - EPSILON]
        n = round(amount)
        return whole[:n] if len(whole) >= n else None

    def acquire(self, need: Mapping[str, float]) -> list[int]:
        """Take ``need`` (the caller checked ``can_run``); returns the GPU indices taken."""
        available = self.available
        for k, v in need.items():
            available[k] = available.get(k, 0.0) - v
        gpus = need.get("GPU", 0.0)
        if gpus <= 0:
            return []
        ids = self.pick_gpus(gpus) or []
        share = gpus if gpus < 1.0 else 1.0
        for i in ids:
            self.gpu_free[i] -= share
        return ids

    def release(self, held: Mapping[str, float], gpu_ids: list[int], lent: float) -> None:
        """Give back ``held`` and its GPUs; ``lent`` CPUs of it were given back already."""
        available = self.available
        for k, v in held.items():
            available[k] = available.get(k, 0.0) + v
        if gpu_ids:
            gpus = held.get("GPU", 0.0)
            share = gpus if gpus < 1.0 else 1.0
            for i in gpu_ids:
                self.gpu_free[i] = min(1.0, self.gpu_free[i] + share)
        if lent:
            available["CPU"] = available.get("CPU", 0.0) - lent

    def lend(self, cpus: float) -> None:
        """A blocked worker gives ``cpus`` back while it waits."""
        self.available["CPU"] = self.available.get("CPU", 0.0) + cpus

    def take_back(self, cpus: float) -> None:
        """A worker that was blocked runs again: it takes back the ``cpus`` it lent."""
        self.available["CPU"] = self.available.get("CPU", 0.0) - cpus
