"""Checks for a machine with a real NVIDIA GPU: skipped where NVML finds none.

Run there with `.venv/bin/python -m pytest tests/gpu -q`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import runtime as rt
from runtime.node.gpus import Gpus
from runtime.testing.wait import wait_for

pytestmark = pytest.mark.gpu

_found = Gpus().count
if not _found:
    pytest.skip("no NVIDIA GPU found by NVML on this machine", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    rt.init(num_cpus=2)
    yield
    rt.shutdown()


def test_discovery_reports_real_gpus(cluster: None) -> None:
    node = rt.nodes()[0]
    assert node["Resources"]["GPU"] == _found
    gpus = node["GPUs"]
    assert len(gpus) == _found
    assert all(g["memory_total"] > 0 and g["name"] != "logical GPU" for g in gpus)


def test_task_sees_its_gpu_in_cuda_visible_devices(cluster: None) -> None:
    @rt.remote(num_gpus=1)
    def where() -> tuple[list[int], str]:
        return rt.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    ids, visible = rt.get(where.remote())
    assert visible == ",".join(map(str, ids)) and len(ids) == 1


def test_utilization_rises_under_load(cluster: None) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")

    @rt.remote(num_gpus=1)
    class Burner:
        def burn(self, seconds: float) -> None:
            import time
            x = torch.randn(4096, 4096, device="cuda")
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                x = x @ x
                x = x / x.norm()
            torch.cuda.synchronize()

    b = Burner.remote()
    ref = b.burn.remote(20.0)

    def busy() -> float:
        return max(g["utilization"] for g in rt.nodes()[0]["GPUs"])

    wait_for(lambda: busy() > 10, timeout=20, what="a GPU's utilization in the heartbeat above 10%")
    rt.get(ref)
