"""The object store on real processes: zero-copy reads, inline small objects, freeing,
spilling to disk and back, and objects that do not fit."""

from __future__ import annotations

import gc
import glob
import mmap
import os
import pathlib
import sys
from typing import Any

import cloudpickle
import numpy as np
import pytest

import runtime as rt
from runtime import state
from runtime.exceptions import ObjectStoreFullError
from runtime.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MiB = 2**20
STORE = 200 * MiB


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    return {"num_cpus": 2, "object_store_memory": STORE}


def _mapping_under(arr: np.ndarray) -> Any:
    """The object at the bottom of ``arr``'s chain of bases (through memoryviews)."""
    obj: Any = arr
    while True:
        if isinstance(obj, np.ndarray) and obj.base is not None:
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return obj


def _shm_files(ref: rt.ObjectRef) -> list[str]:
    """The object's file in any node's shared-memory directory."""
    return glob.glob(f"/dev/shm/cellray-*/{ref.hex()}")


def _spill_dir(cluster: rt.ClusterInfo) -> pathlib.Path:
    return pathlib.Path(cluster.session_dir) / "spill"


def _spilled_files(cluster: rt.ClusterInfo) -> list[pathlib.Path]:
    return [p for p in _spill_dir(cluster).rglob("*") if p.is_file()]


def _store_used() -> int:
    return int(rt.nodes()[0]["ObjectStoreUsed"])


@rt.remote
def describe(arr: np.ndarray) -> tuple[bool, str, int]:
    return arr.flags.writeable, type(_mapping_under(arr)).__name__, int(arr[-1])


@rt.remote
def make_array(n: int, value: int) -> np.ndarray:
    return np.full(n, value, dtype=np.uint8)


def test_large_array_is_a_read_only_view_of_shared_memory(cluster: rt.ClusterInfo) -> None:
    arr = np.arange(50 * MiB // 8, dtype=np.int64)
    ref = rt.put(arr)
    assert _shm_files(ref), "a 50 MB object should live in shared memory"
    got = rt.get(ref)
    assert isinstance(got, np.ndarray) and got.shape == arr.shape and got[-1] == arr[-1]
    assert not got.flags.writeable
    assert isinstance(_mapping_under(got), mmap.mmap), "get() copied the array"
    with pytest.raises(ValueError):
        got[0] = 1
    # A task's result and a task's argument are read the same way.
    result = rt.get(make_array.remote(50 * MiB, 7))
    assert not result.flags.writeable and isinstance(_mapping_under(result), mmap.mmap)
    assert result[0] == 7 and result[-1] == 7
    assert rt.get(describe.remote(ref)) == (False, "mmap", arr[-1])


def test_small_objects_travel_inline(cluster: rt.ClusterInfo) -> None:
    small = {"k": list(range(100))}
    ref = rt.put(small)
    assert rt.get(ref) == small
    assert not _shm_files(ref), "a small object should not get a shared-memory file"
    result = make_array.remote(1000, 3)
    assert rt.get(result).tolist() == [3] * 1000
    assert not _shm_files(result)


def test_dropping_the_last_ref_frees_the_object(cluster: rt.ClusterInfo) -> None:
    ref = rt.put(np.ones(10 * MiB, dtype=np.uint8))
    (path,) = _shm_files(ref)
    view = rt.get(ref)
    del ref
    gc.collect()
    wait_for(lambda: not os.path.exists(path), what="the freed object's file to be removed")
    assert view.sum() == 10 * MiB  # a reader's mapping outlives the file


def test_nested_refs_keep_their_objects_alive(cluster: rt.ClusterInfo) -> None:
    inner = rt.put(np.full(MiB, 5, dtype=np.uint8))
    outer = rt.put({"inner": inner})
    inner_path = _shm_files(inner)
    del inner
    gc.collect()

    @rt.remote
    def read_inner(container: dict[str, Any]) -> int:
        return int(rt.get(container["inner"])[0])

    assert rt.get(read_inner.remote(outer)) == 5
    assert int(rt.get(rt.get(outer)["inner"])[0]) == 5
    assert inner_path and all(os.path.exists(p) for p in inner_path)


def test_many_dropped_puts_keep_the_store_bounded(cluster: rt.ClusterInfo) -> None:
    block = np.ones(MiB, dtype=np.uint8)
    for i in range(10_000):
        rt.put(block)  # the ref is dropped at once
        if i % 1000 == 999:
            # Freed objects are gone from disk too: nothing piles up in the spill directory.
            assert len(_spilled_files(cluster)) < 100, f"objects pile up after {i + 1} puts"
            assert _store_used() <= STORE
    wait_for(lambda: _store_used() < 10 * MiB, timeout=15,
             what="the node's store usage to fall back once the refs are dropped")
    assert len(_spilled_files(cluster)) < 10


def test_objects_spill_to_disk_and_come_back_intact(cluster: rt.ClusterInfo) -> None:
    n = 50 * MiB
    refs = [rt.put(np.full(n, i, dtype=np.uint8)) for i in range(6)]  # 300 MB in a 200 MB store
    wait_for(lambda: _spilled_files(cluster), what="objects spilled to the session directory")
    assert _store_used() <= STORE
    # The GCS's objects table says which ones are on disk (the node reports it with its heartbeat).
    ids = {r.hex() for r in refs}
    on_disk = wait_for(lambda: {o.object_id for o in state.list_objects() if o.spilled} & ids,
                       what="state.list_objects() to show the spilled objects as spilled")
    assert {p.name for p in _spilled_files(cluster)} >= on_disk
    for i in range(len(refs)):
        arr = rt.get(refs[i])
        assert arr.shape == (n,) and arr[0] == i and arr[-1] == i and int(arr[:: 4096].sum()) == i * (n // 4096)
        del arr
    # A spilled object also reaches a task intact.
    assert rt.get([describe.remote(r) for r in refs]) == [(False, "mmap", i) for i in range(6)]
    del refs  # the last refs to them: no loop variable may keep one
    gc.collect()
    wait_for(lambda: not _spilled_files(cluster), what="spilled objects to be freed with their refs")


def test_object_larger_than_the_store(cluster: rt.ClusterInfo) -> None:
    too_big = np.zeros(STORE + MiB, dtype=np.uint8)
    with pytest.raises(ObjectStoreFullError, match="object_store_memory"):
        rt.put(too_big)

    @rt.remote
    def big() -> np.ndarray:
        return np.zeros(STORE + MiB, dtype=np.uint8)

    with pytest.raises(ObjectStoreFullError, match="object_store_memory"):
        rt.get(big.remote(), timeout=30)
    assert rt.get(make_array.remote(10, 1)).tolist() == [1] * 10


def _pool_blanks() -> list[str]:
    return [os.path.basename(p) for p in glob.glob("/dev/shm/cellray-*/.pool/*")]


def test_freed_files_are_reused_only_when_no_reader_mapped_them(cluster: rt.ClusterInfo) -> None:
    n = 8 * MiB
    kept = rt.get(rt.put(np.full(n, 7, dtype=np.uint8)))  # mapped, then its ref is gone at once
    task_arg = rt.put(np.full(n, 9, dtype=np.uint8))
    assert rt.get(describe.remote(task_arg)) == (False, "mmap", 9)  # a worker mapped it too
    del task_arg
    for i in range(6):  # puts nobody reads: each freed file may become the next one's
        ref = rt.put(np.full(n, i, dtype=np.uint8))
        del ref
    wait_for(lambda: any(".r" in b for b in _pool_blanks()), what="a freed, unread file kept as a blank")
    for i in range(6):  # writing into reused files never touches what readers still map
        assert rt.get(rt.put(np.full(n, 100 + i, dtype=np.uint8)))[0] == 100 + i
    assert int(kept.min()) == int(kept.max()) == 7 and kept.shape == (n,)
