"""GPU discovery and live use through NVML (the ``nvidia-ml-py`` package, module ``pynvml``).

This is the one boundary where the node touches NVML, so tests inject a stand-in module
here. No NVML library, no driver or no GPU means zero GPUs; a broken NVML (a driver error)
is logged once and treated the same. Nothing here raises.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from runtime.protocol import common_pb2

logger = logging.getLogger(__name__)


class Gpus:
    """The node's GPUs: found once at start, sampled for every heartbeat."""

    def __init__(self, nvml: ModuleType | Any | None = None, declared: int | None = None,
                 visible: str | None = None) -> None:
        """``nvml``: the pynvml module (imported when None); ``declared``: logical GPU count;
        ``visible``: the ``CUDA_VISIBLE_DEVICES`` the node was started with (None: none set).

        When ``declared`` is given the node has exactly that many GPUs: real ones (with live
        figures) for the indices NVML knows, logical ones beyond. When ``visible`` lists
        devices, only those are the node's, under their own ids (``ids``): a task given the
        node's first GPU sees ``CUDA_VISIBLE_DEVICES`` and ``get_gpu_ids()`` name that id, as
        in Ray.
        """
        self._nvml: Any = nvml
        self._handles: list[Any] = []
        self._names: list[str] = []
        self._totals: list[int] = []
        self._warned = False
        shown = _parse_visible(visible)
        self._init(shown)
        found = len(self._handles) if shown is None else min(len(shown), len(self._handles) or len(shown))
        self.count = found if declared is None else int(declared)
        #: The id of each of the node's GPUs (``CUDA_VISIBLE_DEVICES`` names these).
        self.ids: list[int] = _ids_for(shown, self.count)

    def _warn(self, what: str, err: BaseException) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("NVML %s failed (%s: %s); this node reports no GPU figures",
                           what, type(err).__name__, err)

    def _init(self, shown: list[int] | None) -> None:
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml
            except ImportError:
                return
            nvml = self._nvml = pynvml
        try:
            nvml.nvmlInit()
            n = nvml.nvmlDeviceGetCount()
            for i in (range(n) if shown is None else [i for i in shown if i < n]):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                name = nvml.nvmlDeviceGetName(h)
                self._names.append(name.decode() if isinstance(name, bytes) else str(name))
                self._totals.append(int(nvml.nvmlDeviceGetMemoryInfo(h).total))
                self._handles.append(h)
        # NVML raises its own classes (library not found, driver errors, no GPU); nothing here may raise.
        except Exception as e:  # noqa: BLE001
            if type(e).__name__ not in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"):
                self._warn("discovery", e)
            else:
                logger.info("no NVIDIA driver here (%s); GPUs are logical only", type(e).__name__)
            self._handles, self._names, self._totals = [], [], []

    def sample(self) -> list[common_pb2.GpuInfo]:
        """One GpuInfo per GPU: live utilization and memory for real ones."""
        out = []
        for i in range(self.count):
            info = common_pb2.GpuInfo(index=self.ids[i])
            if i < len(self._handles):
                info.name, info.memory_total = self._names[i], self._totals[i]
                try:
                    h = self._handles[i]
                    info.utilization = float(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu)
                    info.memory_used = int(self._nvml.nvmlDeviceGetMemoryInfo(h).used)
                # A failing NVML sample must not stop the heartbeat.
                except Exception as e:  # noqa: BLE001
                    self._warn("sampling", e)
            else:
                info.name = "logical GPU"
            out.append(info)
        return out


def _parse_visible(value: str | None) -> list[int] | None:
    """The device ids of a ``CUDA_VISIBLE_DEVICES`` value; None when unset or not a list of
    numbers (UUIDs, which only CUDA resolves: every GPU is then the node's)."""
    if value is None or not value.strip():
        return None if value is None else []
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        logger.info("CUDA_VISIBLE_DEVICES=%r is not a list of indices; using every GPU found", value)
        return None


def _ids_for(shown: list[int] | None, count: int) -> list[int]:
    """``count`` GPU ids: the visible ones first, then the next free numbers."""
    ids = list(shown or [])[:count]
    n = max(ids, default=-1) + 1
    while len(ids) < count:
        if n not in ids:
            ids.append(n)
        n += 1
    return ids
