"""Logical GPUs end to end: ids, CUDA_VISIBLE_DEVICES, fractional packing, nodes()."""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Iterator

import pytest

import runtime as rt

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    rt.init(num_cpus=4, num_gpus=2)
    yield
    rt.shutdown()


def test_two_concurrent_whole_gpu_tasks_see_different_ids(cluster: None, tmp_path: pathlib.Path) -> None:
    @rt.remote(num_gpus=1)
    def hold(me: str, other: str) -> tuple[list[int], str]:
        pathlib.Path(me).touch()
        while not os.path.exists(other):  # both run at once, or this never returns
            time.sleep(0.01)
        return rt.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    (ids1, vis1), (ids2, vis2) = rt.get([hold.remote(a, b), hold.remote(b, a)], timeout=60)
    assert sorted(ids1 + ids2) == [0, 1]
    assert vis1 == str(ids1[0]) and vis2 == str(ids2[0])


def test_fractional_tasks_share_gpu_zero(cluster: None, tmp_path: pathlib.Path) -> None:
    @rt.remote(num_gpus=0.25, num_cpus=0)
    def quarter(me: str, n: int) -> list[int]:
        pathlib.Path(me).touch()
        while len(list(pathlib.Path(me).parent.glob("q*"))) < n:
            time.sleep(0.01)
        return rt.get_gpu_ids()

    refs = [quarter.remote(str(tmp_path / f"q{i}"), 4) for i in range(4)]
    assert rt.get(refs, timeout=60) == [[0]] * 4


def test_driver_and_plain_tasks_have_no_gpu(cluster: None) -> None:
    @rt.remote
    def plain() -> list[int]:
        return rt.get_gpu_ids()

    assert rt.get_gpu_ids() == []
    assert rt.get(plain.remote()) == []


def test_nodes_report_logical_gpus(cluster: None) -> None:
    node = rt.nodes()[0]
    assert node["Resources"]["GPU"] == 2.0
    assert [g["name"] for g in node["GPUs"]] == ["logical GPU", "logical GPU"]


def test_gpu_request_over_one_must_be_whole(cluster: None) -> None:
    with pytest.raises(ValueError, match="whole number"):
        rt.remote(num_gpus=1.5)(lambda: None)



def test_a_gpu_task_never_runs_in_a_worker_that_ran_cpu_work(cluster: None) -> None:
    @rt.remote
    def cpu_pid() -> int:
        return os.getpid()

    @rt.remote(num_gpus=1)
    def gpu_pid() -> int:
        return os.getpid()

    cpu = set(rt.get([cpu_pid.remote() for _ in range(8)], timeout=60))
    gpu = set(rt.get([gpu_pid.remote() for _ in range(4)], timeout=60))
    assert not cpu & gpu
    # And the other way: CPU work does not go to the workers that ran GPU work.
    assert not set(rt.get([cpu_pid.remote() for _ in range(8)], timeout=60)) & gpu
