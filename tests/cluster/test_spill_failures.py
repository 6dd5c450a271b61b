"""Spilling that fails, on real processes: the put (or the task) that needs the room fails
at once with an error naming the spill directory and the sizes, nothing stored before is
lost, and the node keeps serving.

The conditions are real ones, not patched code: the node's spill directory
(``<session>/spill/<node>``) is to be made under a regular file, so ``mkdir`` fails for
root too; and a full disk is ``/dev/full``, which fails every write with the kernel's own
ENOSPC.
"""

from __future__ import annotations

import gc
import os
import pathlib
import re
import shutil
import sys
from collections.abc import Callable, Iterator

import cloudpickle
import numpy as np
import pytest

import runtime as rt
from runtime.exceptions import ObjectSpillError, ObjectStoreFullError

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MiB = 2**20
BLOCK = 8 * MiB  # two fit in the store side by side; a third needs a spill
STORE = 20 * MiB


@rt.remote
def make_block(value: int) -> np.ndarray:
    return np.full(BLOCK, value, dtype=np.uint8)


@rt.remote
def first(arr: np.ndarray) -> int:
    return int(arr[0])


@rt.remote
def add_one(x: int) -> int:
    return x + 1


@pytest.fixture
def small_store() -> Iterator[rt.ClusterInfo]:
    """A one-node cluster whose object store holds two blocks."""
    info = rt.init(num_cpus=1, object_store_memory=STORE)
    try:
        yield info
    finally:
        rt.shutdown()
        gc.collect()  # now, under the test's warning filters


def _spill_dir(info: rt.ClusterInfo) -> pathlib.Path:
    return pathlib.Path(info.session_dir) / "spill" / info.node_id[:8]


def _block(value: int) -> np.ndarray:
    return np.full(BLOCK, value, dtype=np.uint8)


def _assert_kept(refs: list[rt.ObjectRef]) -> None:
    for i, ref in enumerate(refs):
        arr = rt.get(ref, timeout=60)
        assert arr.shape == (BLOCK,) and arr[0] == i and arr[-1] == i, f"object {i} changed"
        del arr


def _assert_small_work_runs() -> None:
    assert rt.get(rt.put({"small": [1, 2, 3]}), timeout=60) == {"small": [1, 2, 3]}
    assert rt.get(add_one.remote(1), timeout=60) == 2


def test_a_spill_directory_that_cannot_be_made(small_store: rt.ClusterInfo) -> None:
    spill_root = pathlib.Path(small_store.session_dir) / "spill"
    shutil.rmtree(spill_root)
    spill_root.write_text("a regular file where the nodes' spill directories go")
    kept = [rt.put(_block(i)) for i in range(2)]

    with pytest.raises(ObjectSpillError, match=re.escape(str(_spill_dir(small_store)))) as info:
        rt.put(_block(9))
    err = info.value
    assert isinstance(err, ObjectStoreFullError)
    message = str(err)
    assert "Not a directory" in message and "Objects stored before are kept" in message
    assert f"of its 20.0 MiB ({STORE} bytes)" in message and "object_store_memory" in message
    # A task whose result needs the room fails with the same error, and so does a call
    # whose large argument would.
    with pytest.raises(ObjectSpillError, match="spilling older objects"):
        rt.get(make_block.remote(9), timeout=60)
    with pytest.raises(ObjectSpillError, match="spilling older objects"):
        first.remote(_block(9))

    _assert_kept(kept)
    _assert_small_work_runs()
    assert rt.get(first.remote(kept[1]), timeout=60) == 1


def test_a_full_disk(small_store: rt.ClusterInfo,
                     our_cluster_pids: Callable[[], dict[str, list[int]]]) -> None:
    kept = [rt.put(_block(i)) for i in range(2)]
    # The store copies a victim to "<spill file>.<its pid>.tmp" before renaming it into
    # place; for kept[0], the least recently used, that name leads to /dev/full.
    (node_pid,) = our_cluster_pids()["node"]
    spill = _spill_dir(small_store)
    spill.mkdir()
    os.symlink("/dev/full", spill / f"{kept[0].hex()}.{node_pid}.tmp")

    with pytest.raises(ObjectSpillError, match="No space left on device") as info:
        rt.put(_block(9))
    message = str(info.value)
    assert str(spill) in message and "free there" in message
    assert not any(spill.iterdir()), "a partial spill file was left behind"
    _assert_kept(kept)
    _assert_small_work_runs()

    # The disk has room again: the next put spills kept[0] and everything reads back.
    kept.append(rt.put(_block(2)))
    assert (spill / kept[0].hex()).exists()
    _assert_kept(kept)


def test_a_task_on_another_node_whose_result_cannot_spill_fails_at_once(tmp_path: pathlib.Path) -> None:
    """Three nodes, each store holding two blocks, no spill directory possible: a task
    placed on a far node whose result needs a spill fails at once with that node's error;
    the blocks stored there before read back from the driver's node, and every node
    serves on."""
    from runtime.cluster.local import LocalCluster, NodeSpec
    from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = LocalCluster([NodeSpec(num_cpus=1, object_store_memory=STORE) for _ in range(3)],
                           session_root=tmp_path / "s").start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        spill_root = pathlib.Path(cluster.session_dir) / "spill"
        shutil.rmtree(spill_root, ignore_errors=True)
        spill_root.write_text("a regular file where the nodes' spill directories go")
        far = cluster.node_info[2]["node_id"]
        on_far = NodeAffinitySchedulingStrategy(far, soft=False)
        kept = [make_block.options(scheduling_strategy=on_far).remote(i) for i in range(2)]
        assert rt.get([first.options(scheduling_strategy=on_far).remote(r) for r in kept],
                      timeout=60) == [0, 1]

        with pytest.raises(ObjectSpillError, match=re.escape(str(spill_root / far[:8]))) as info:
            rt.get(make_block.options(scheduling_strategy=on_far).remote(9), timeout=60)
        assert "Objects stored before are kept" in str(info.value)

        _assert_kept(kept)  # pulled to the driver's node, byte for byte
        nodes = [n["node_id"] for n in cluster.node_info]
        assert rt.get([add_one.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
                       .remote(i) for i, n in enumerate(nodes)], timeout=60) == [1, 2, 3]
    finally:
        rt.shutdown()
        cluster.stop()
        gc.collect()
