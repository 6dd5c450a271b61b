"""Writing and reading object files in shared memory: the producer and reader side.

Any process on a node (driver, worker, node manager) uses these two functions; the
node's ``SharedMemoryStore`` only decides *where* files go and accounts for them.

Lifetime relies on POSIX semantics: unlinking a file does not take its pages away from
a process that has it mapped. A reader's arrays therefore stay valid after the store
frees or spills the object; the memory returns to the system when the last mapping is
released (here: when the last buffer that views it is garbage-collected).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os

from runtime.config import Settings
from runtime.exceptions import ObjectCorruptError, ObjectFileMissingError, ObjectStoreFullError
from runtime.object_store._files import free_bytes, unlink_quietly
from runtime.object_store.pool import POOL_MIN, claim
from runtime.protocol.codec import Serialized, deserialize

logger = logging.getLogger(__name__)

__all__ = ["read_bytes", "read_object", "write_bytes", "write_object"]

#: Files up to this size are read with one read() into bytes instead of mapped: a
#: mapping costs a few page-table operations and an munmap, which for small objects is
#: more than copying them (measured crossover: between 64 KiB and 1 MiB). The default of
#: ``read_object``'s ``read_limit``; a process that holds its Settings passes theirs.
_READ_LIMIT = Settings.shm_read_limit_bytes
#: Linux accepts at most this many pieces per writev (IOV_MAX).
_IOV_MAX = 1024


def write_object(path: str, s: Serialized) -> None:
    """Write ``s`` to a new file at ``path`` (normally ``store.path_for(object_id)``).

    Each out-of-band buffer (a numpy array's data) is copied exactly once, from the
    value's memory into the file's pages. The copy goes through ``writev`` rather than a
    mapping: it is still a single copy, but it avoids a page fault per 4 KiB page (about
    1.7x faster for 1-100 MB measured here) and a full /dev/shm fails with ENOSPC
    instead of killing the writer with SIGBUS. ``s.write_into`` remains the way to fill
    a mapping that already exists.

    Raises
    ------
    FileExistsError
        A file is already at ``path``: the object exists or another producer is writing
        it. Objects are immutable, so callers treat the object as present.
    ObjectStoreFullError
        The shared-memory file system is full; the partial file is removed.
    """
    _write_file(path, s.parts(), s.nbytes)


def write_bytes(path: str, data: bytes) -> None:
    """``write_object`` for a value that arrived serialized, as one ``bytes`` (the put of
    a driver on another machine, which cannot write here itself). Raises as it does."""
    _write_file(path, [data], len(data))


def read_bytes(path: str) -> bytes:
    """The whole object file at ``path``, to send to a reader on another machine.

    Raises ``ObjectFileMissingError`` (a ``FileNotFoundError``) as ``read_object`` does."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ObjectFileMissingError(f"object file {path} does not exist: the object was freed or "
                                     "spilled after it was located; locate it again", path=path) from None


def _write_file(path: str, parts: list[bytes | memoryview], total: int) -> None:
    # A blank segment of the node's pool when one fits (pages allocated already), else a new file.
    fd = claim(path, total) if total >= POOL_MIN else None
    blank = fd is not None
    if fd is None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, parts, total)
        if blank:
            os.ftruncate(fd, total)  # the blank's tail goes back to the system
    except BaseException as exc:
        os.close(fd)
        unlink_quietly(path)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise ObjectStoreFullError(
                f"No room in {os.path.dirname(path)} for a {total}-byte object "
                f"({free_bytes(path)} bytes free on that file system). Enlarge /dev/shm "
                f"(docker: --shm-size) or lower `object_store_memory` so spilling starts "
                f"earlier.", path=path, size=total) from exc
        raise
    os.close(fd)


def _write_all(fd: int, parts: list[bytes | memoryview], total: int) -> None:
    """writev every piece, resuming after short writes (Linux caps one call at ~2 GiB)."""
    written = 0
    while parts:
        batch = parts[:_IOV_MAX]
        n = os.writev(fd, batch)
        written += n
        # Drop what was fully written; keep the unwritten tail of a partial piece.
        i = 0
        while i < len(batch) and n >= len(batch[i]):
            n -= len(batch[i])
            i += 1
        parts = parts[i:]
        if n:
            parts[0] = memoryview(parts[0])[n:]
    if written != total:
        raise OSError(errno.EIO, f"wrote {written} bytes, expected {total}")


def read_object(path: str, read_limit: int = _READ_LIMIT) -> object:
    """Load the object in the file at ``path`` without copying its buffers.

    Large files are mapped read-only and deserialized in place: numpy arrays are
    read-only views of the mapping, which lives as long as any of them does and is
    unmapped by garbage collection after. Files up to ``read_limit`` bytes
    (``Settings.shm_read_limit_bytes``, 128 KiB by default) are read into ``bytes``
    instead (cheaper than a mapping; arrays are read-only there too).

    Raises
    ------
    ObjectFileMissingError
        No file at ``path`` (the object was freed or spilled after it was located:
        locate it again, or pin it while it is being read); a ``FileNotFoundError``.
    ObjectCorruptError
        The file is empty (a producer crashed while writing it, or it was never sealed);
        a ``ValueError``. A file that is not a complete cellray object raises the
        codec's ``ValueError``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ObjectFileMissingError(
            f"object file {path} does not exist: the object was freed or spilled after it was "
            f"located; locate it again (a get() does)", path=path) from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ObjectCorruptError(
                f"object file {path} is empty: its producer has not written it yet or died "
                f"while writing it; run the task that makes it again", path=path)
        data: bytes | memoryview
        if size <= read_limit:
            data = os.read(fd, size)
        else:
            data = memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_READ))
    finally:
        # The mapping keeps its own reference to the file; the descriptor is not needed.
        os.close(fd)
    return deserialize(data)

