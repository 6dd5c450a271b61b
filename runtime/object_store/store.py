"""The node's shared-memory object store: where object files live and how much they use.

The node manager owns one ``SharedMemoryStore``. Producers (workers, drivers) write a
new object's file themselves at ``path_for(object_id)`` with ``shm.write_object`` and
ask the node to ``seal`` it; readers ask the node to ``locate`` an object and map the
path they get back with ``shm.read_object``. The store never reads object contents: it
accounts for sizes, keeps an LRU order, and when sealing would pass ``capacity`` it
spills the least recently used unpinned objects to disk (copy, then unlink from shared
memory). ``locate`` brings a spilled object back. A spill that fails (the directory
cannot be made or written, the disk is full) changes nothing: the object stays in shared
memory, and only the object that needed the room is refused (``ObjectSpillError``).

Unlinking never pulls pages from under a reader that has the file mapped (POSIX), so
spilling or freeing an object that is being read is safe; its memory only returns to
the system when the reader lets go, which ``used`` does not see. Pin an object while a
process reads it when that accounting must be exact, or when the path you hand out
must still exist when the reader opens it.

Every method is synchronous and guarded by one lock, so the node manager may call it
from its event loop thread and from executor threads alike.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from runtime.exceptions import (
    ObjectCorruptError,
    ObjectFileMissingError,
    ObjectSpillError,
    ObjectStoreClosedError,
    ObjectStoreFullError,
)
from runtime.object_store._files import copy_into_place, fmt_bytes, free_bytes, unlink_quietly
from runtime.object_store.pool import POOL_MIN, SegmentPool
from runtime.object_store.shm import write_object
from runtime.protocol.codec import Serialized

logger = logging.getLogger(__name__)

__all__ = ["SharedMemoryStore"]


class _Entry:
    __slots__ = ("in_shm", "mapped", "pins", "size")

    def __init__(self, size: int) -> None:
        self.size = size  #: bytes of the object's file
        self.pins = 0  #: nested pin count; pinned objects are never spilled
        self.in_shm = True  #: False while the object lives in the spill directory
        self.mapped = False  #: a reader mapped it: its file is never reused (``mark_mapped``)


class SharedMemoryStore:
    """Objects of one node as files under ``shm_dir``, spilled to ``spill_dir`` when full.

    Parameters
    ----------
    shm_dir
        A directory on a shared-memory file system, e.g. ``/dev/shm/cellray-<session>-<node>``;
        created when missing.
    spill_dir
        A directory on local disk for spilled objects; created on the first spill.
    capacity
        Bytes of shared memory the store may use (``object_store_memory``).

    Example::

        store = SharedMemoryStore(Path("/dev/shm/cellray-s1-n1"), Path("/tmp/spill"), 2**30)
        write_object(store.path_for(oid), serialize(array))    # any process on the node
        store.seal(oid, size)                                   # the node manager
        value = read_object(store.locate(oid))                  # any process on the node
    """

    def __init__(self, shm_dir: pathlib.Path, spill_dir: pathlib.Path, capacity: int,
                 pool_bytes: int = 0) -> None:
        if capacity <= 0:
            raise ValueError(f"object store capacity must be positive, got {capacity}")
        self._shm_dir = pathlib.Path(shm_dir)
        self._spill_dir = pathlib.Path(spill_dir)
        self._capacity = capacity
        # Directories this store made, removed whole by close(); pre-existing ones are
        # left in place with only this store's files removed.
        self._created: list[pathlib.Path] = []
        self._make_dir(self._shm_dir)
        self._shm_prefix = os.path.join(str(self._shm_dir), "")
        self._spill_prefix = os.path.join(str(self._spill_dir), "")
        self._lock = threading.Lock()
        self._objects: dict[bytes, _Entry] = {}
        #: Unpinned objects in shared memory, least recently used first: spill victims.
        self._lru: OrderedDict[bytes, None] = OrderedDict()
        self._used = 0  # bytes in shared memory
        self._pinned_bytes = 0  # bytes in shared memory held by pinned objects
        self._spilled_bytes = 0  # bytes in the spill directory
        #: Objects spilled (True) or restored (False) since ``take_moves`` last ran.
        self._moves: dict[bytes, bool] = {}
        self._counters = {"spills": 0, "restores": 0, "bytes_spilled_total": 0,
                          "bytes_restored_total": 0}
        self._closed = False
        #: Blank segments large puts are written into (``pool.py``); None without a budget.
        self._pool = (SegmentPool(self._shm_dir, pool_bytes, lambda: self._capacity - self._used)
                      if pool_bytes > 0 else None)

    def _make_dir(self, path: pathlib.Path) -> None:
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            self._created.append(path)

    # -- paths ---------------------------------------------------------------------------

    def path_for(self, object_id: bytes) -> str:
        """Where a producer writes the new object ``object_id`` (``shm_dir/<hex id>``)."""
        return self._shm_prefix + object_id.hex()

    def _spill_path(self, object_id: bytes) -> str:
        return self._spill_prefix + object_id.hex()

    # -- adding objects ------------------------------------------------------------------

    def seal(self, object_id: bytes, size: int) -> None:
        """Account for the object a producer finished writing at ``path_for(object_id)``.

        Spills least recently used unpinned objects until it fits. Sealing an id that is
        already sealed does nothing (objects are immutable; a retried task may seal twice).

        Raises
        ------
        ObjectFileMissingError
            No file at ``path_for(object_id)`` (a ``FileNotFoundError``).
        ObjectCorruptError
            The file does not hold ``size`` bytes (a partial write); it is removed (a
            ``ValueError``).
        ObjectStoreFullError
            The object is larger than the store, or does not fit beside the pinned
            objects; the file is removed.
        ObjectSpillError
            Spilling older objects to make room failed (the spill directory cannot be
            made or written, or its disk is full): an ``ObjectStoreFullError`` naming the
            directory and the sizes. The file is removed; every object sealed before
            stays where it was.
        """
        with self._lock:
            self._check_open()
            if object_id in self._objects:
                logger.debug("object %s is already sealed", object_id.hex())
                return
            path = self.path_for(object_id)
            try:
                actual = os.stat(path).st_size
            except FileNotFoundError:
                raise ObjectFileMissingError(
                    f"cannot seal object {object_id.hex()}: {path} does not exist; write it "
                    f"with write_object(store.path_for(object_id), ...) first",
                    object_id=object_id.hex(), path=path) from None
            if actual != size:
                unlink_quietly(path)
                raise ObjectCorruptError(
                    f"cannot seal object {object_id.hex()}: the producer announced {size} bytes "
                    f"but {path} holds {actual} (it died while writing?); the file was removed. "
                    f"Run the task that makes it again.", object_id=object_id.hex(), path=path)
            self._make_room(object_id, size, path)
            self._add(object_id, size)

    def put(self, object_id: bytes, serialized: Serialized) -> str:
        """Write ``serialized`` as ``object_id`` from this process and seal it; return its path.

        Room is made before writing, so shared memory never goes over capacity. Other
        store calls wait while the bytes are copied. Putting an id that already exists
        only returns its path.

        Raises
        ------
        ObjectStoreFullError
            As for ``seal`` (``ObjectSpillError`` too), or the shared-memory file system
            itself is full.
        """
        with self._lock:
            self._check_open()
            path = self.path_for(object_id)
            if object_id in self._objects:
                return path
            size = serialized.nbytes
            self._make_room(object_id, size, None)
            write_object(path, serialized)
            self._add(object_id, size)
            return path

    def _add(self, object_id: bytes, size: int) -> None:
        self._objects[object_id] = _Entry(size)
        self._lru[object_id] = None
        self._used += size
        if self._pool is not None and size >= POOL_MIN:
            self._pool.wake()  # its producer may have taken a blank: make another

    def _make_room(self, object_id: bytes, size: int, path: str | None) -> None:
        """Spill until ``size`` more bytes fit; on failure remove ``path`` and raise."""
        if size > self._capacity:
            if path is not None:
                unlink_quietly(path)
            raise ObjectStoreFullError(
                f"Object {object_id.hex()[:12]} is {fmt_bytes(size)}, larger than this node's whole "
                f"object store ({fmt_bytes(self._capacity)}). Raise `object_store_memory` in "
                f"`runtime.init()`, or pass the data in smaller pieces.",
                object_id=object_id.hex(), size=size, capacity=self._capacity)
        if self._pinned_bytes + size > self._capacity:
            if path is not None:
                unlink_quietly(path)
            raise ObjectStoreFullError(
                f"Object {object_id.hex()[:12]} ({fmt_bytes(size)}) does not fit in this node's "
                f"object store: {fmt_bytes(self._pinned_bytes)} of its {fmt_bytes(self._capacity)} are "
                f"pinned by objects in use, which are never spilled. Let go of objects you no "
                f"longer need (or wait for running tasks to finish), raise "
                f"`object_store_memory` in `runtime.init()`, or pass smaller pieces.",
                object_id=object_id.hex(), size=size, capacity=self._capacity,
                pinned_bytes=self._pinned_bytes)
        try:
            while self._used + size > self._capacity:
                self._spill_lru()
        except OSError as exc:
            # Only the newcomer is refused: what failed to spill stays in shared memory.
            if path is not None:
                unlink_quietly(path)
            logger.warning("refused object %s (%d bytes): spilling to %s failed: %s",
                           object_id.hex(), size, self._spill_dir, exc)
            raise self._spill_error(object_id, size, exc) from exc

    def _spill_error(self, object_id: bytes, size: int, exc: OSError) -> ObjectSpillError:
        spill_dir = str(self._spill_dir)
        free = free_bytes(spill_dir) if exc.errno == errno.ENOSPC else -1
        on_disk = f" ({fmt_bytes(free)} free there)" if free >= 0 else ""
        return ObjectSpillError(
            f"Cannot store object {object_id.hex()[:12]} ({fmt_bytes(size)}): this node's object "
            f"store holds {fmt_bytes(self._used)} of its {fmt_bytes(self._capacity)} and spilling older "
            f"objects to {spill_dir} failed{on_disk}: {exc}. Objects stored before are kept. "
            f"Make that directory writable or free space on its disk, raise "
            f"`object_store_memory` in `runtime.init()`, or drop refs to objects you no "
            f"longer need.", object_id=object_id.hex(), size=size, used=self._used,
            capacity=self._capacity, spill_dir=spill_dir, reason=str(exc))

    # -- spilling ------------------------------------------------------------------------

    def _spill_lru(self) -> None:
        """Move the least recently used unpinned object to disk.

        On failure (OSError: the directory cannot be made or written, the disk is full)
        nothing changed: the object is still in shared memory and still the first victim.
        """
        self._make_dir(self._spill_dir)  # a stat, each time: it may have been removed
        object_id = next(iter(self._lru))
        copy_into_place(self.path_for(object_id), self._spill_path(object_id))
        # Only a complete copy on disk lets the shared-memory one go.
        del self._lru[object_id]
        entry = self._objects[object_id]
        unlink_quietly(self.path_for(object_id))
        entry.in_shm = False
        self._used -= entry.size
        self._spilled_bytes += entry.size
        self._counters["spills"] += 1
        self._counters["bytes_spilled_total"] += entry.size
        self._moves[object_id] = True
        logger.debug("spilled object %s (%d bytes) to %s", object_id.hex(), entry.size,
                     self._spill_dir)

    def locate(self, object_id: bytes) -> str:
        """The path to map for ``object_id`` now; marks it most recently used.

        A spilled object is first restored into shared memory (spilling others if need
        be); when it cannot fit beside the pinned objects, or restoring fails, the spill
        file's path is returned instead, which is just as mappable.

        Raises
        ------
        KeyError
            The object is not in this store.
        """
        with self._lock:
            self._check_open()
            entry = self._objects.get(object_id)
            if entry is None:
                raise KeyError(f"object {object_id.hex()} is not in this node's object store")
            if entry.in_shm:
                if not entry.pins:
                    self._lru.move_to_end(object_id)
                return self.path_for(object_id)
            return self._restore(object_id, entry)

    def _restore(self, object_id: bytes, entry: _Entry) -> str:
        spill_path = self._spill_path(object_id)
        if self._pinned_bytes + entry.size > self._capacity:
            return spill_path
        path = self.path_for(object_id)
        try:
            while self._used + entry.size > self._capacity:
                self._spill_lru()
            copy_into_place(spill_path, path)
        except OSError:
            logger.warning("could not restore object %s from %s; serving it from disk",
                           object_id.hex(), spill_path, exc_info=True)
            return spill_path
        unlink_quietly(spill_path)
        entry.in_shm = True
        self._used += entry.size
        self._spilled_bytes -= entry.size
        if entry.pins:
            self._pinned_bytes += entry.size
        else:
            self._lru[object_id] = None
        self._counters["restores"] += 1
        self._moves[object_id] = False
        self._counters["bytes_restored_total"] += entry.size
        logger.debug("restored object %s (%d bytes) from disk", object_id.hex(), entry.size)
        return path

    # -- pins and freeing ----------------------------------------------------------------

    def pin(self, object_id: bytes) -> None:
        """Keep ``object_id`` from being spilled until a matching ``unpin`` (counts nest).

        A spilled object stays on disk until ``locate`` restores it, and is pinned from then.

        Raises
        ------
        KeyError
            The object is not in this store.
        """
        with self._lock:
            entry = self._objects.get(object_id)
            if entry is None:
                raise KeyError(f"cannot pin object {object_id.hex()}: it is not in this "
                               f"node's object store")
            entry.pins += 1
            if entry.pins == 1 and entry.in_shm:
                del self._lru[object_id]
                self._pinned_bytes += entry.size

    def unpin(self, object_id: bytes) -> None:
        """Undo one ``pin``. Unknown (already freed) ids are ignored.

        Raises
        ------
        ValueError
            The object is not pinned: pins and unpins do not match.
        """
        with self._lock:
            entry = self._objects.get(object_id)
            if entry is None:
                return
            if not entry.pins:
                raise ValueError(f"cannot unpin object {object_id.hex()}: it is not pinned "
                                 f"(more unpin than pin calls)")
            entry.pins -= 1
            if not entry.pins and entry.in_shm:
                self._lru[object_id] = None
                self._pinned_bytes -= entry.size

    def mark_mapped(self, object_ids: Iterable[bytes]) -> None:
        """A reader mapped these objects (it may keep the mapping after they are freed):
        their files are removed when freed, never kept as blank segments."""
        with self._lock:
            for oid in object_ids:
                entry = self._objects.get(oid)
                if entry is not None:
                    entry.mapped = True

    def free(self, object_id: bytes) -> None:
        """Remove ``object_id`` wherever it is, pinned or not; unknown ids are ignored.

        The file of an object in shared memory that no reader mapped and nothing pins
        becomes a blank segment of the pool when it has room (``pool.py``), else it is
        removed. For an id the store does not know, a file a producer left at
        ``path_for`` (it died before sealing) is removed too.
        """
        with self._lock:
            entry = self._objects.pop(object_id, None)
            if entry is None:
                unlink_quietly(self.path_for(object_id))
                return
            if entry.in_shm:
                self._used -= entry.size
                if entry.pins:
                    self._pinned_bytes -= entry.size
                else:
                    del self._lru[object_id]
                path = self.path_for(object_id)
                if entry.pins or entry.mapped or self._pool is None or not self._pool.adopt(
                        path, entry.size, self._capacity - self._used):
                    unlink_quietly(path)
            else:
                self._spilled_bytes -= entry.size
                unlink_quietly(self._spill_path(object_id))

    # -- queries -------------------------------------------------------------------------

    def contains(self, object_id: bytes) -> bool:
        """Whether ``object_id`` is sealed here (in shared memory or spilled)."""
        return object_id in self._objects

    def size_of(self, object_id: bytes) -> int:
        """The object's size in bytes. Raises KeyError when it is not here."""
        entry = self._objects.get(object_id)
        if entry is None:
            raise KeyError(f"object {object_id.hex()} is not in this node's object store")
        return entry.size

    @property
    def used(self) -> int:
        """Bytes of sealed objects in shared memory (never above ``capacity``)."""
        return self._used

    @property
    def capacity(self) -> int:
        """Bytes of shared memory the store may use."""
        return self._capacity

    @property
    def num_objects(self) -> int:
        """Objects held, in shared memory or spilled."""
        return len(self._objects)

    @property
    def spilled_bytes(self) -> int:
        """Bytes of objects currently in the spill directory."""
        return self._spilled_bytes

    def take_moves(self) -> dict[bytes, tuple[int, bool]]:
        """The objects spilled to disk (True) or restored (False) since the last call, with
        their sizes (those freed meanwhile left out), for the GCS's objects table."""
        with self._lock:
            moves, self._moves = self._moves, {}
            return {oid: (self._objects[oid].size, spilled) for oid, spilled in moves.items()
                    if oid in self._objects}

    @property
    def spilled_total(self) -> int:
        """Bytes spilled to disk since the store was made."""
        return int(self._counters["bytes_spilled_total"])

    def stats(self) -> dict[str, Any]:
        """A snapshot of sizes and counters, for heartbeats and dashboards."""
        with self._lock:
            spilled = sum(1 for e in self._objects.values() if not e.in_shm)
            return {
                "capacity": self._capacity, "used": self._used,
                "pinned_bytes": self._pinned_bytes, "spilled_bytes": self._spilled_bytes,
                "num_objects": len(self._objects), "num_in_memory": len(self._objects) - spilled,
                "num_spilled": spilled, **self._counters,
            }

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Remove every object file and the directories this store created. Idempotent."""
        if self._pool is not None:
            self._pool.close()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for object_id, entry in self._objects.items():
                unlink_quietly(self.path_for(object_id) if entry.in_shm
                        else self._spill_path(object_id))
            self._objects.clear()
            self._lru.clear()
            self._used = self._pinned_bytes = self._spilled_bytes = 0
            for path in reversed(self._created):
                # Whole directories: they may also hold files producers never sealed.
                shutil.rmtree(path, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise ObjectStoreClosedError(f"the object store in {self._shm_dir} is closed",
                                         shm_dir=str(self._shm_dir))

    def __enter__(self) -> SharedMemoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<SharedMemoryStore {self._shm_dir} {len(self._objects)} objects, "
                f"{fmt_bytes(self._used)} of {fmt_bytes(self._capacity)} used, "
                f"{fmt_bytes(self._spilled_bytes)} spilled>")

