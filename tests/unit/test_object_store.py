"""The shared-memory object store and the shm reader/writer, on real files in /dev/shm."""

from __future__ import annotations

import os
import pathlib
import pickle
import shutil
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from runtime.exceptions import ObjectSpillError, ObjectStoreFullError
from runtime.object_store import SharedMemoryStore, read_object, shm, write_object
from runtime.protocol.codec import serialize

MB = 1 << 20
MakeStore = Callable[[int], SharedMemoryStore]


def oid(n: int) -> bytes:
    return n.to_bytes(20, "big")


def blob(n: int, size: int = MB) -> np.ndarray:
    """A recognisable array of ``size`` bytes."""
    return np.full(size, n % 251, dtype=np.uint8)


@pytest.fixture
def shm_dir() -> Iterator[pathlib.Path]:
    path = pathlib.Path("/dev/shm") / f"cellray-test-{uuid.uuid4().hex}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_store(shm_dir: pathlib.Path,
               tmp_path: pathlib.Path) -> Iterator[Callable[[int], SharedMemoryStore]]:
    stores: list[SharedMemoryStore] = []

    def make(capacity: int) -> SharedMemoryStore:
        store = SharedMemoryStore(shm_dir, tmp_path / "spill", capacity)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
    assert not shm_dir.exists()


def produce(store: SharedMemoryStore, object_id: bytes, value: object) -> int:
    """What a worker does: write the file itself, then ask the node to seal it."""
    s = serialize(value)
    write_object(store.path_for(object_id), s)
    store.seal(object_id, s.nbytes)
    return s.nbytes


def test_seal_locate_free(make_store: MakeStore, shm_dir: pathlib.Path) -> None:
    store = make_store(10 * MB)
    size = produce(store, oid(1), {"x": np.arange(100)})
    assert store.contains(oid(1)) and store.size_of(oid(1)) == size
    assert store.used == size and store.num_objects == 1
    path = store.locate(oid(1))
    assert path == str(shm_dir / oid(1).hex())
    out = read_object(path)
    assert isinstance(out, dict) and np.array_equal(out["x"], np.arange(100))
    store.seal(oid(1), size)  # sealing twice is a no-op
    assert store.used == size

    store.free(oid(1))
    assert not store.contains(oid(1)) and not os.path.exists(path)
    assert store.used == 0 and store.num_objects == 0
    store.free(oid(1))  # unknown ids are ignored
    with pytest.raises(KeyError, match=oid(1).hex()):
        store.locate(oid(1))


def test_put_returns_a_readable_path(make_store: MakeStore) -> None:
    store = make_store(10 * MB)
    path = store.put(oid(2), serialize("hello"))
    assert read_object(path) == "hello"
    assert store.put(oid(2), serialize("ignored: objects are immutable")) == path
    assert read_object(store.locate(oid(2))) == "hello"


def test_seal_checks_the_file(make_store: MakeStore) -> None:
    store = make_store(10 * MB)
    with pytest.raises(FileNotFoundError, match="write_object"):
        store.seal(oid(3), 100)
    s = serialize(blob(3, 1000))
    write_object(store.path_for(oid(3)), s)
    with pytest.raises(ValueError, match=f"announced {s.nbytes + 1} bytes"):
        store.seal(oid(3), s.nbytes + 1)
    assert not os.path.exists(store.path_for(oid(3)))
    assert not store.contains(oid(3))


def test_full_store_spills_lru_and_locate_restores(
        make_store: MakeStore, tmp_path: pathlib.Path) -> None:
    store = make_store(3 * MB + 4096)  # three 1 MB objects fit, four do not
    sizes = [produce(store, oid(i), blob(i)) for i in range(3)]
    assert store.spilled_bytes == 0
    store.locate(oid(0))  # 0 is now more recent than 1 and 2

    produce(store, oid(3), blob(3))
    assert store.used <= store.capacity
    assert store.spilled_bytes == sizes[1]  # 1 was the least recently used
    assert not os.path.exists(store.path_for(oid(1)))
    assert (tmp_path / "spill" / oid(1).hex()).exists()
    assert store.stats()["num_spilled"] == 1

    path = store.locate(oid(1))  # restores 1, spilling 2 (now the LRU)
    assert path == store.path_for(oid(1))
    assert np.array_equal(read_object(path), blob(1))  # type: ignore[arg-type]
    assert not (tmp_path / "spill" / oid(1).hex()).exists()
    assert (tmp_path / "spill" / oid(2).hex()).exists()
    assert store.used <= store.capacity and store.num_objects == 4
    stats = store.stats()
    assert stats["spills"] == 2 and stats["restores"] == 1
    for i in range(4):
        assert np.array_equal(read_object(store.locate(oid(i))), blob(i))  # type: ignore[arg-type]

    store.free(oid(0))
    store.free(oid(1))
    store.free(oid(2))
    store.free(oid(3))
    assert store.used == 0 and store.spilled_bytes == 0
    assert not any((tmp_path / "spill").iterdir())


def test_pinned_objects_are_never_spilled(make_store: MakeStore) -> None:
    store = make_store(3 * MB + 4096)
    produce(store, oid(0), blob(0))
    store.pin(oid(0))
    store.pin(oid(0))  # pins nest
    for i in range(1, 10):
        produce(store, oid(i), blob(i))
        assert os.path.exists(store.path_for(oid(0)))
    store.unpin(oid(0))
    produce(store, oid(10), blob(10))
    assert os.path.exists(store.path_for(oid(0)))  # still pinned once
    store.unpin(oid(0))
    for i in range(11, 14):
        produce(store, oid(i), blob(i))
    assert not os.path.exists(store.path_for(oid(0)))  # unpinned, then the LRU
    with pytest.raises(ValueError, match="not pinned"):
        store.unpin(oid(0))
    store.unpin(oid(999))  # unknown: ignored
    with pytest.raises(KeyError):
        store.pin(oid(999))


def test_no_room_beside_pinned_objects(make_store: MakeStore) -> None:
    store = make_store(2 * MB + 4096)
    for i in range(2):
        produce(store, oid(i), blob(i))
        store.pin(oid(i))
    s = serialize(blob(2))
    path = store.path_for(oid(2))
    write_object(path, s)
    with pytest.raises(ObjectStoreFullError, match="pinned") as info:
        store.seal(oid(2), s.nbytes)
    assert "object_store_memory" in str(info.value)
    assert info.value.pinned_bytes == store.used  # type: ignore[attr-defined]
    assert not os.path.exists(path) and not store.contains(oid(2))
    with pytest.raises(ObjectStoreFullError, match="pinned"):
        store.put(oid(2), s)
    assert not os.path.exists(path)


def test_spilled_object_served_from_disk_when_it_cannot_come_back(
        make_store: MakeStore, tmp_path: pathlib.Path) -> None:
    store = make_store(2 * MB + 4096)
    for i in range(3):
        produce(store, oid(i), blob(i))  # 0 is spilled
    store.pin(oid(1))
    store.pin(oid(2))
    path = store.locate(oid(0))
    assert path == str(tmp_path / "spill" / oid(0).hex())
    assert np.array_equal(read_object(path), blob(0))  # type: ignore[arg-type]
    store.unpin(oid(2))
    assert store.locate(oid(0)) == store.path_for(oid(0))  # now 2 can make way


def test_object_larger_than_capacity(make_store: MakeStore) -> None:
    store = make_store(MB)
    s = serialize(blob(0, 2 * MB))
    path = store.path_for(oid(0))
    write_object(path, s)
    with pytest.raises(ObjectStoreFullError) as info:
        store.seal(oid(0), s.nbytes)
    message = str(info.value)
    assert f"{s.nbytes} bytes" in message and f"{MB} bytes" in message
    assert "object_store_memory" in message and "smaller pieces" in message
    assert not os.path.exists(path)
    with pytest.raises(ObjectStoreFullError, match="larger than this node's whole"):
        store.put(oid(0), s)
    assert not os.path.exists(path) and store.used == 0


def test_many_puts_freed_keep_usage_flat(
        make_store: MakeStore, shm_dir: pathlib.Path) -> None:
    store = make_store(8 * MB)
    s = serialize(blob(7))  # serialized once: the test is about the store, not the codec
    before = shutil.disk_usage("/dev/shm").used
    for i in range(10_000):
        store.put(oid(i), s)
        store.free(oid(i))
        assert store.used == 0
        if i % 1000 == 0:
            assert len(os.listdir(shm_dir)) == 0
    assert store.num_objects == 0 and store.spilled_bytes == 0
    assert store.stats()["spills"] == 0
    # 10 GB went through /dev/shm; anything near that would be a leak. Other processes
    # may use /dev/shm meanwhile, hence the generous margin.
    assert shutil.disk_usage("/dev/shm").used - before < 1024 * MB


def test_reader_keeps_data_after_free(make_store: MakeStore) -> None:
    store = make_store(64 * MB)
    expected = np.arange(MB, dtype=np.int64)  # 8 MB: mapped, not copied
    produce(store, oid(0), expected)
    view = read_object(store.locate(oid(0)))
    store.free(oid(0))
    assert not os.path.exists(store.path_for(oid(0)))
    assert np.array_equal(view, expected)  # type: ignore[arg-type]


def test_read_object_100mb_roundtrip(shm_dir: pathlib.Path) -> None:
    shm_dir.mkdir()
    array = np.random.default_rng(1).random(100 * MB // 8)
    path = str(shm_dir / "big")
    write_object(path, serialize(array))
    out = read_object(path)
    assert isinstance(out, np.ndarray)
    assert not out.flags.writeable
    assert np.array_equal(out, array)
    with pytest.raises(ValueError, match="read-only"):
        out[0] = 1.0


def test_write_object_refuses_an_existing_file(shm_dir: pathlib.Path) -> None:
    shm_dir.mkdir()
    path = str(shm_dir / "x")
    write_object(path, serialize(1))
    with pytest.raises(FileExistsError):
        write_object(path, serialize(2))
    assert read_object(path) == 1


def test_read_object_bad_files(shm_dir: pathlib.Path) -> None:
    shm_dir.mkdir()
    empty = shm_dir / "empty"
    empty.touch()
    with pytest.raises(ValueError, match="empty"):
        read_object(str(empty))
    with pytest.raises(FileNotFoundError):
        read_object(str(shm_dir / "missing"))
    (shm_dir / "junk").write_bytes(b"not an object at all")
    with pytest.raises(ValueError, match="not a cellray object"):
        read_object(str(shm_dir / "junk"))


def test_write_object_many_buffers_and_short_writes(
        shm_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shm_dir.mkdir()
    arrays = [np.full(100 + i, i, dtype=np.int16) for i in range(700)]  # > IOV_MAX pieces
    write_object(str(shm_dir / "many"), serialize(arrays))
    out = read_object(str(shm_dir / "many"))
    assert all(np.array_equal(a, b) for a, b in zip(out, arrays, strict=True))  # type: ignore[call-overload]

    real_writev = os.writev

    def short_writev(fd: int, parts: list[bytes | memoryview]) -> int:
        # At most 1000 bytes per call, cutting through pieces, like a capped write.
        return real_writev(fd, [memoryview(b"".join(bytes(p) for p in parts))[:1000]])

    monkeypatch.setattr(shm.os, "writev", short_writev)
    value = {"a": np.arange(5000), "b": "x" * 3000}
    write_object(str(shm_dir / "short"), serialize(value))
    monkeypatch.undo()
    out = read_object(str(shm_dir / "short"))
    assert isinstance(out, dict) and np.array_equal(out["a"], value["a"]) and out["b"] == value["b"]


def test_free_removes_an_unsealed_leftover(make_store: MakeStore) -> None:
    store = make_store(MB)
    write_object(store.path_for(oid(5)), serialize(5))  # producer died before sealing
    store.free(oid(5))
    assert not os.path.exists(store.path_for(oid(5)))


def test_close_removes_everything(shm_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    spill = tmp_path / "spill"
    store = SharedMemoryStore(shm_dir, spill, 2 * MB)
    for i in range(4):
        store.put(oid(i), serialize(blob(i, MB // 2 + 1)))
    assert store.spilled_bytes > 0 and spill.exists()
    store.close()
    store.close()  # idempotent
    assert not shm_dir.exists() and not spill.exists()
    with pytest.raises(RuntimeError, match="closed"):
        store.put(oid(9), serialize(1))


def test_close_keeps_directories_it_did_not_create(
        shm_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    shm_dir.mkdir()
    (shm_dir / "someone-elses").write_bytes(b"x")
    store = SharedMemoryStore(shm_dir, tmp_path / "spill", MB)
    store.put(oid(1), serialize(1))
    store.close()
    assert sorted(os.listdir(shm_dir)) == ["someone-elses"]


def test_capacity_must_be_positive(shm_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        SharedMemoryStore(shm_dir, tmp_path, 0)


# ---- spilling that fails -------------------------------------------------------------


@pytest.fixture
def store_spilling_to(shm_dir: pathlib.Path) -> Iterator[Callable[[pathlib.Path], SharedMemoryStore]]:
    """``store_spilling_to(dir)``: a store of three 1 MB objects whose spill directory is ``dir``."""
    stores: list[SharedMemoryStore] = []

    def make(spill_dir: pathlib.Path) -> SharedMemoryStore:
        stores.append(SharedMemoryStore(shm_dir, spill_dir, 3 * MB + 4096))
        return stores[-1]

    yield make
    for store in stores:
        store.close()


def _unusable_spill_dir(tmp_path: pathlib.Path, how: str) -> pathlib.Path:
    if how == "under a regular file":  # mkdir fails, whoever runs the test (root too)
        (tmp_path / "file").write_text("not a directory")
        return tmp_path / "file" / "spill"
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only directory")
    spill = tmp_path / "read-only"
    spill.mkdir(mode=0o500)
    return spill


def _assert_kept(store: SharedMemoryStore, ids: range) -> None:
    """Every object of ``ids`` reads back value by value."""
    for i in ids:
        assert np.array_equal(read_object(store.locate(oid(i))), blob(i)), f"object {i} changed"  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["under a regular file", "read-only"])
def test_a_failed_spill_refuses_only_the_new_object(
        store_spilling_to: Callable[[pathlib.Path], SharedMemoryStore],
        tmp_path: pathlib.Path, how: str) -> None:
    spill = _unusable_spill_dir(tmp_path, how)
    store = store_spilling_to(spill)
    sizes = [produce(store, oid(i), blob(i)) for i in range(3)]
    s = serialize(blob(3))
    path = store.path_for(oid(3))
    write_object(path, s)
    with pytest.raises(ObjectSpillError) as info:
        store.seal(oid(3), s.nbytes)
    err = info.value
    assert isinstance(err, ObjectStoreFullError)
    message = str(err)
    assert str(spill) in message and "Objects stored before are kept" in message
    assert f"({s.nbytes} bytes)" in message and f"({sum(sizes)} bytes)" in message
    assert f"({store.capacity} bytes)" in message and "object_store_memory" in message
    assert (err.spill_dir, err.size, err.used) == (str(spill), s.nbytes, sum(sizes))  # type: ignore[attr-defined]
    assert str(pickle.loads(pickle.dumps(err))) == message  # it travels to the driver
    # The newcomer is gone; everything sealed before is still in shared memory.
    assert not os.path.exists(path) and not store.contains(oid(3))
    assert store.used == sum(sizes) and store.stats()["spills"] == 0
    _assert_kept(store, range(3))
    with pytest.raises(ObjectSpillError, match="spilling older objects"):
        store.put(oid(3), s)
    assert not os.path.exists(path)
    # The would-be victim is still a normal object: pinned, unpinned, freed.
    store.pin(oid(0))
    store.unpin(oid(0))
    store.free(oid(0))
    assert store.num_objects == 2


def test_spilling_works_again_once_the_directory_is_usable(
        store_spilling_to: Callable[[pathlib.Path], SharedMemoryStore],
        tmp_path: pathlib.Path) -> None:
    spill = _unusable_spill_dir(tmp_path, "under a regular file")
    store = store_spilling_to(spill)
    for i in range(3):
        produce(store, oid(i), blob(i))
    with pytest.raises(ObjectSpillError):
        store.put(oid(3), serialize(blob(3)))
    (tmp_path / "file").unlink()
    store.put(oid(3), serialize(blob(3)))
    assert (spill / oid(0).hex()).exists(), "0 was the least recently used: the first victim"
    _assert_kept(store, range(4))


def test_a_full_disk_keeps_what_it_could_not_spill(
        store_spilling_to: Callable[[pathlib.Path], SharedMemoryStore],
        tmp_path: pathlib.Path) -> None:
    spill = tmp_path / "spill"
    store = store_spilling_to(spill)
    for i in range(3):
        produce(store, oid(i), blob(i))
    # A 2 MB newcomer needs two victims: 0 spills, then the disk is "full" for 1. The
    # store copies to "<spill file>.<pid>.tmp" first; that name leads to /dev/full here,
    # which fails every write with the kernel's own ENOSPC.
    spill.mkdir()
    os.symlink("/dev/full", f"{spill / oid(1).hex()}.{os.getpid()}.tmp")
    with pytest.raises(ObjectSpillError, match="No space left on device") as info:
        store.put(oid(3), serialize(blob(3, 2 * MB)))
    assert str(spill) in str(info.value) and "free there" in str(info.value)
    assert store.stats()["spills"] == 1 and store.spilled_bytes == store.size_of(oid(0))
    assert sorted(os.listdir(spill)) == [oid(0).hex()], "a partial copy was left behind"
    assert not store.contains(oid(3))
    _assert_kept(store, range(3))  # 0 from disk (restored), 1 and 2 from shared memory


def test_moves_to_disk_and_back_are_reported_once(tmp_path: pathlib.Path) -> None:
    base = pathlib.Path("/dev/shm" if os.path.isdir("/dev/shm") else tmp_path)
    shm_dir = base / f"cellray-moves-{os.getpid()}"
    store = SharedMemoryStore(shm_dir, tmp_path / "spill", 3 * MB)
    try:
        a, b = b"a" * 20, b"b" * 20
        for oid in (a, b):
            store.put(oid, serialize(np.zeros(2 * MB, dtype=np.uint8)))  # b pushes a to disk
        moves = store.take_moves()
        assert moves == {a: (store.size_of(a), True)}
        assert store.take_moves() == {}  # reported once
        store.locate(a)  # back into memory, b out
        assert store.take_moves() == {a: (store.size_of(a), False), b: (store.size_of(b), True)}
        store.locate(a)
        store.free(b)
        assert store.take_moves() == {}
    finally:
        store.close()
