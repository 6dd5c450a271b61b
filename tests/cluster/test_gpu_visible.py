"""A node started with ``CUDA_VISIBLE_DEVICES`` offers those devices under their own ids,
as Ray does (issue 14, point 7). Logical GPUs: no device is needed."""

from __future__ import annotations

import os
import pathlib
import time

import pytest

import runtime as rt

pytestmark = pytest.mark.cluster


def test_gpu_ids_follow_the_drivers_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    rt.init(num_cpus=2)
    try:
        assert rt.cluster_resources()["GPU"] == 2

        @rt.remote(num_gpus=1)
        def hold(me: str, other: str) -> tuple[list[int], str]:
            pathlib.Path(me).touch()
            while not os.path.exists(other):  # both run at once, or this never returns
                time.sleep(0.01)
            return rt.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

        a, b = str(tmp_path / "a"), str(tmp_path / "b")
        (ids1, vis1), (ids2, vis2) = rt.get([hold.remote(a, b), hold.remote(b, a)], timeout=60)
        assert sorted(ids1 + ids2) == [5, 7]
        assert vis1 == str(ids1[0]) and vis2 == str(ids2[0])
        assert sorted(g.index for n in rt.state.list_nodes() for g in n.gpus) == [5, 7]
    finally:
        rt.shutdown()
