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

    def __init__(self, nvml: ModuleType | Any | None = None, declared: int | None = None) -> None:
        """``nvml``: the pynvml module (imported when None); ``declared``: logical GPU count.

        When ``declared`` is given the node has exactly that many GPUs: real ones (with live
        figures) for the indices NVML knows, logical ones beyond.
        """
        self._nvml: Any = nvml
        self._handles: list[Any] = []
        self._names: list[str] = []
        self._totals: list[int] = []
        self._warned = False
        self._init()
        found = len(self._handles)
        self.count = found if declared is None else int(declared)

    def _warn(self, what: str, err: BaseException) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("NVML %s failed (%s: %s); this node reports no GPU figures",
                           what, type(err).__name__, err)

    def _init(self) -> None:
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
            for i in range(n):
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
            info = common_pb2.GpuInfo(index=i)
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
