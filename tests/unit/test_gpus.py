"""GPU discovery through an NVML stand-in (the one boundary where a double is right) and
GPU-id packing in the pure local scheduler."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from runtime.config import Settings
from runtime.node.actions import Send
from runtime.node.gpus import Gpus
from runtime.node.state import LocalScheduler
from runtime.protocol import common_pb2, node_pb2


class FakeNvml:
    """Behaves like pynvml for two GPUs; ``broken`` makes init raise like a driver error."""

    class NVMLError_Unknown(Exception):
        pass

    def __init__(self, n: int = 2, broken: bool = False, util: int = 37) -> None:
        self.n, self.broken, self.util = n, broken, util

    def nvmlInit(self) -> None:
        if self.broken:
            raise FakeNvml.NVMLError_Unknown("driver/library version mismatch")

    def nvmlDeviceGetCount(self) -> int:
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA H100"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=80 * 2**30, used=(h + 1) * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=self.util + h)


def test_discovery_reports_count_names_memory_and_live_use() -> None:
    g = Gpus(FakeNvml(2))
    assert g.count == 2
    sample = g.sample()
    assert [s.name for s in sample] == ["NVIDIA H100", "NVIDIA H100"]
    assert sample[0].memory_total == 80 * 2**30
    assert [s.utilization for s in sample] == [37.0, 38.0]
    assert sample[1].memory_used == 2 * 2**30


def test_broken_nvml_means_no_gpu_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    g = Gpus(FakeNvml(2, broken=True))
    assert g.count == 0 and g.sample() == []
    assert sum("NVML discovery failed" in r.message for r in caplog.records) == 1


def test_declared_gpus_without_nvml_are_logical() -> None:
    g = Gpus(FakeNvml(0), declared=3)
    assert g.count == 3
    assert [s.name for s in g.sample()] == ["logical GPU"] * 3


class Store:
    def seal(self, *a: Any) -> None: ...
    def locate(self, o: bytes) -> str: return "/x"
    def pin(self, o: bytes) -> None: ...
    def unpin(self, o: bytes) -> None: ...
    def free(self, o: bytes) -> None: ...


def _node(gpus: int, workers: int = 8) -> LocalScheduler:
    s = LocalScheduler(b"n" * 16, {"CPU": 16.0, "GPU": float(gpus)}, Store(), lambda e: b"e",
                       settings=Settings())
    s.connect(b"d" * 16, "driver", 1)
    for i in range(workers):
        wid = bytes([i]) * 16
        s.worker_starting(wid, counted=False)
        s.connect(bytes([100 + i]) * 16, "worker", 10 + i, wid)
    s.take_actions()
    return s


def _submit(s: LocalScheduler, i: int, gpus: float) -> None:
    spec = common_pb2.TaskSpec(task_id=bytes([i]) * 16, name="g", num_returns=0, owner_id=b"d" * 16)
    spec.resources.update({"CPU": 1.0, "GPU": gpus})
    s.submit(b"d" * 16, spec)


def _dispatched(s: LocalScheduler) -> list[list[int]]:
    """The GPU ids of every task sent to a worker since the last call."""
    return [list(a.op.execute.gpu_ids) for a in s.take_actions()
            if isinstance(a, Send) and a.op.WhichOneof("op") == "execute"]


def test_fractions_pack_onto_the_first_gpu_before_the_next() -> None:
    s = _node(2)
    for i in range(5):
        _submit(s, i, 0.25)
    assert _dispatched(s) == [[0], [0], [0], [0], [1]]


def test_whole_gpus_get_distinct_ids_and_wait_when_none_is_free() -> None:
    s = _node(2)
    _submit(s, 1, 0.5)
    _submit(s, 2, 1)
    _submit(s, 3, 1)  # GPU 0 is half taken: only GPU 1 is whole
    assert _dispatched(s) == [[0], [1]]
    res = node_pb2.TaskResult(task_id=bytes([1]) * 16)
    worker_client = bytes([100 + 7]) * 16  # workers are handed out last-in first-out
    s.result(worker_client, res)
    assert _dispatched(s) == [[0]]
