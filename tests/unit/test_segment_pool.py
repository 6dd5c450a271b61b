"""Blank segments (``runtime.object_store.pool``) with a real store in /dev/shm: the pool
fills only after its first large object, a large write takes the smallest blank that
fits and is cut to its size, the pool makes another behind it, two producers never share
a blank, a blank never takes room the store needs, and closing removes every blank."""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from runtime.object_store import SharedMemoryStore, read_object, write_object
from runtime.object_store.pool import POOL_DIR, SegmentPool, claim, classes_for
from runtime.protocol.codec import serialize
from runtime.testing.wait import wait_for

MB = 1 << 20


@pytest.fixture
def shm_dir(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    base = pathlib.Path("/dev/shm" if os.path.isdir("/dev/shm") else tmp_path)
    yield base / f"cellray-test-pool-{uuid.uuid4().hex[:8]}"


def test_the_classes_fit_the_budget() -> None:
    assert classes_for(0) == []
    assert classes_for(40 * MB) == [16 * MB, 4 * MB]
    assert classes_for(256 * MB) == [128 * MB, 64 * MB, 16 * MB, 4 * MB]


def test_a_large_object_goes_into_a_blank_cut_to_its_size(shm_dir: pathlib.Path,
                                                          tmp_path: pathlib.Path) -> None:
    store = SharedMemoryStore(shm_dir, tmp_path / "spill", 512 * MB, pool_bytes=40 * MB)
    try:
        pool = store._pool
        assert pool is not None and pool.blanks() == {}  # nothing before the first large object
        first = serialize(np.arange(3 * MB // 8, dtype=np.int64))
        store.seal(b"a" * 20, _write(store, b"a" * 20, first))
        wait_for(lambda: pool.blanks() == {16 * MB: 1, 4 * MB: 1}, what="the pool to fill")
        second = serialize(np.full(3 * MB // 8, 7, dtype=np.int64))
        path = store.path_for(b"b" * 20)
        write_object(path, second)  # takes the 4 MB blank: the smallest that fits
        assert pool.blanks() == {16 * MB: 1}
        assert os.stat(path).st_size == second.nbytes  # the tail went back
        store.seal(b"b" * 20, second.nbytes)
        assert int(read_object(path)[5]) == 7
        wait_for(lambda: pool.blanks() == {16 * MB: 1, 4 * MB: 1}, what="another 4 MB blank")
        with pytest.raises(FileExistsError):  # an object that exists is never overwritten
            write_object(path, second)
        assert pool.blanks() == {16 * MB: 1}  # the blank it took is gone, not reused
    finally:
        store.close()
    assert not shm_dir.exists()


def _write(store: SharedMemoryStore, oid: bytes, s: object) -> int:
    write_object(store.path_for(oid), s)  # type: ignore[arg-type]
    return int(s.nbytes)  # type: ignore[attr-defined]


def test_a_blank_is_claimed_once(shm_dir: pathlib.Path) -> None:
    (shm_dir / POOL_DIR).mkdir(parents=True)
    try:
        blank = shm_dir / POOL_DIR / f"{4 * MB}.1"
        blank.write_bytes(b"\0" * 4096)
        fd = claim(str(shm_dir / "one"), 2 * MB)
        assert fd is not None
        os.close(fd)
        assert claim(str(shm_dir / "two"), 2 * MB) is None  # gone: the second writes a new file
        assert claim(str(shm_dir / "three"), 8 * MB) is None
        assert sorted(p.name for p in shm_dir.iterdir()) == [POOL_DIR, "one"]
    finally:
        for p in sorted(shm_dir.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        shm_dir.rmdir()


def test_the_pool_never_takes_room_the_store_needs(shm_dir: pathlib.Path) -> None:
    shm_dir.mkdir()
    try:
        free = os.statvfs(shm_dir).f_bavail * os.statvfs(shm_dir).f_frsize
        pool = SegmentPool(shm_dir, 40 * MB, lambda: free)  # the store may need all of it
        try:
            pool.wake()
            wait_for(lambda: pool.looked, what="the filler to look")
            assert pool.blanks() == {}
        finally:
            pool.close()
    finally:
        shm_dir.rmdir()


def test_a_freed_object_no_reader_mapped_becomes_the_next_objects_file(shm_dir: pathlib.Path,
                                                                       tmp_path: pathlib.Path) -> None:
    store = SharedMemoryStore(shm_dir, tmp_path / "spill", 512 * MB, pool_bytes=40 * MB)
    try:
        pool = store._pool
        assert pool is not None
        value = serialize(np.ones(3 * MB // 8))
        a, b, c = (bytes([i]) * 20 for i in range(1, 4))
        store.seal(a, _write(store, a, value))
        inode = os.stat(store.path_for(a)).st_ino
        wait_for(lambda: pool.blanks() == {16 * MB: 1, 4 * MB: 1}, what="the pool to fill")
        store.free(a)  # nobody mapped it: its pages become a blank
        assert not os.path.exists(store.path_for(a))
        assert pool.blanks() == {16 * MB: 1, 4 * MB: 1, value.nbytes: 1}
        store.seal(b, _write(store, b, value))  # the smallest blank that fits: a's file
        assert os.stat(store.path_for(b)).st_ino == inode
        assert float(read_object(store.path_for(b)).sum()) == 3 * MB // 8
        store.mark_mapped([b])  # a reader mapped b: it may hold the mapping after the free
        store.free(b)
        assert value.nbytes not in pool.blanks()
        store.seal(c, _write(store, c, value))
        store.pin(c)  # pinned (a pull reading it): never reused either
        store.free(c)
        assert value.nbytes not in pool.blanks() and not os.path.exists(store.path_for(c))
    finally:
        store.close()
