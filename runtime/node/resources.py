"""The node's resources: totals, what running tasks have not taken, and each GPU's free share.

A task takes its resources when it starts on a worker and gives them back when it ends.
GPUs are also handed out by index: a fraction of a GPU packs onto the lowest-numbered GPU
with room for it; a whole number takes that many entirely free GPUs. A worker blocked in
``get`` lends its task's CPUs back (``lend``) until it runs again (``take_back``).
"""

from __future__ import annotations

from collections.abc import Mapping

from runtime.protocol.resources import EPSILON, fits, how_many_fit

#: How the GPU names of placement-group bundles start (``runtime.protocol.bundles``).
_GROUP_GPU = "GPU_group_"


class Resources:
    """Totals, available amounts and per-GPU free fractions of one node."""

    __slots__ = ("available", "bundle_gpus", "gpu_free", "gpu_ids", "group_gpu_use", "total")

    def __init__(self, total: Mapping[str, float]) -> None:
        #: Total resources of this node.
        self.total: dict[str, float] = dict(total)
        #: What running tasks have not taken (CPU lent by blocked workers is back here).
        self.available: dict[str, float] = dict(total)
        #: Free fraction of each GPU, by index: fractions pack onto the lowest index first.
        self.gpu_free: list[float] = [1.0] * int(total.get("GPU", 0))
        #: The id of the GPU at each index, as tasks see it (``CUDA_VISIBLE_DEVICES``): the
        #: node's visible devices (``Gpus.ids``), else the indices themselves.
        self.gpu_ids: list[int] = list(range(len(self.gpu_free)))
        #: The GPU indices behind each GPU name of a committed bundle (``GPU_group_0_<pg>``,
        #: ``GPU_group_<pg>``): a task asking for that name gets them.
        self.bundle_gpus: dict[str, list[int]] = {}
        #: Share of each of those GPUs that running tasks of the bundles hold.
        self.group_gpu_use: dict[int, float] = {}

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
            return self._group_gpus(need) if self.bundle_gpus else []
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
            if gpus <= 0:  # GPUs of a bundle
                gpus = next((v for k, v in held.items() if k.startswith(_GROUP_GPU)), 0.0)
                use = self.group_gpu_use
                for i in gpu_ids:
                    left = use.get(i, 0.0) - (gpus if gpus < 1.0 else 1.0)
                    if left > EPSILON:
                        use[i] = left
                    else:
                        use.pop(i, None)
            else:
                share = gpus if gpus < 1.0 else 1.0
                for i in gpu_ids:
                    self.gpu_free[i] = min(1.0, self.gpu_free[i] + share)
        if lent:
            available["CPU"] = available.get("CPU", 0.0) - lent

    def grow(self, extra: Mapping[str, float]) -> None:
        """The node gains ``extra`` (a committed bundle's own resources), free at once."""
        self._tidy()
        total, available = self.total, self.available
        for k, v in extra.items():
            total[k] = total.get(k, 0.0) + v
            available[k] = available.get(k, 0.0) + v

    def shrink(self, gone: Mapping[str, float]) -> list[str]:
        """The node loses ``gone`` (a released bundle's own resources); a name whose total
        reaches zero is dropped. Returns the names that running tasks now hold more of than
        is left: what holds them must stop."""
        self._tidy()
        total, available = self.total, self.available
        over = []
        for k, v in gone.items():
            left = total.get(k, 0.0) - v
            if left > EPSILON:
                total[k] = left
            else:
                total.pop(k, None)
            free = available.get(k, 0.0) - v
            if free < -EPSILON:
                over.append(k)
            if k in total or abs(free) > EPSILON:
                available[k] = free  # negative while holders run; their release brings it to 0
            else:
                available.pop(k, None)
        return over

    def bundle_gpus_changed(self, names: list[str], ids: list[int], added: bool) -> None:
        """A committed bundle's GPUs (``ids``) are behind ``names`` now (``added``), or no more."""
        for name in names:
            held = self.bundle_gpus.setdefault(name, [])
            if added:
                held.extend(i for i in ids if i not in held)
            else:
                held[:] = [i for i in held if i not in ids]
            if not held:
                del self.bundle_gpus[name]

    def _group_gpus(self, need: Mapping[str, float]) -> list[int]:
        """GPU indices for a task asking for a bundle's GPUs: a fraction shares the first of
        them with room, a whole number takes that many not in use."""
        for name, amount in need.items():
            ids = self.bundle_gpus.get(name)
            if not ids or amount <= 0:
                continue
            use = self.group_gpu_use
            if amount < 1.0:
                pick = next(([i] for i in ids if use.get(i, 0.0) + amount <= 1.0 + EPSILON), ids[:1])
            else:
                pick = [i for i in ids if use.get(i, 0.0) <= EPSILON][:round(amount)]
            for i in pick:
                use[i] = use.get(i, 0.0) + (amount if amount < 1.0 else 1.0)
            return pick
        return []

    def _tidy(self) -> None:
        """Drop names an earlier ``shrink`` left in ``available`` once their holders ended."""
        total, available = self.total, self.available
        for name in [k for k, v in available.items() if k not in total and abs(v) <= 1e-6]:
            del available[name]

    def lend(self, cpus: float) -> None:
        """A blocked worker gives ``cpus`` back while it waits."""
        self.available["CPU"] = self.available.get("CPU", 0.0) + cpus

    def take_back(self, cpus: float) -> None:
        """A worker that was blocked runs again: it takes back the ``cpus`` it lent."""
        self.available["CPU"] = self.available.get("CPU", 0.0) - cpus
