"""Blank segments: shared memory allocated ahead of the puts that will fill it.

Writing a large object into a new file in /dev/shm is slow for a reason that has nothing
to do with copying: the kernel allocates and zeroes every page on the way (about 3 GB/s
here, where copying into pages that exist runs several times faster). A node's
``SegmentPool`` keeps a few *blank* files of fixed sizes (size classes) in
``<shm_dir>/.pool``, allocated by a background thread (``posix_fallocate``) while nothing
waits for them. A producer of an object of at least ``POOL_MIN`` bytes
(``shm.write_object``: drivers and workers) claims the smallest blank that fits, makes it
the object's file, writes into its pages and cuts it to the object's size, which gives the
tail back; the pool makes another blank of that class behind it.

A freed object's file becomes a blank too when no reader ever mapped it (``adopt``; the
clients say which objects they mapped, ``ClientOp.mapped``): a loop of large puts then
writes into the same pages over and over, as a store with its own arena would.

Claiming needs no round trip to the node and is safe between processes: a blank is taken
by renaming it to a name of the claimer's own (one rename wins), then linked to the
object's path (which fails if the object exists, as ``O_EXCL`` would). A blank is never
mapped by anyone before it is claimed, and an object's file is never reused after it is
freed if a reader mapped it (it may still map it), so no reader ever sees another
object's bytes.

The pool's files live in the same file system as the store; the pool never lets them take
room the store may need (``capacity - used``), and gives up filling for a while when the
file system is full. Budget: ``Settings.store_pool_bytes``.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import pathlib
import shutil
import threading
from collections.abc import Callable

from runtime.object_store._files import free_bytes

__all__ = ["POOL_DIR", "POOL_MIN", "SegmentPool", "claim", "classes_for"]

logger = logging.getLogger(__name__)

#: The pool's directory, inside the store's.
POOL_DIR = ".pool"
#: Objects at least this large are written into a blank when one fits.
POOL_MIN = 1 << 20
#: The size classes, smallest first (each holds objects up to its size).
_CLASSES = tuple(c << 20 for c in (4, 16, 64, 128))
#: How long the filler rests after the file system said it was full (seconds).
_FULL_REST_S = 5.0


def classes_for(budget: int) -> list[int]:
    """The blanks a pool of ``budget`` bytes keeps: one of each class that fits in half of
    it (so a claim and its refill never need more than the budget), largest first."""
    return sorted((c for c in _CLASSES if c <= budget // 2), reverse=True)


def claim(path: str, size: int) -> int | None:
    """Make a blank of at least ``size`` bytes the new file at ``path``; its descriptor,
    open for writing at offset 0, or None when no blank fits (write a new file then).

    Raises ``FileExistsError`` when ``path`` exists (the object is there already)."""
    pool = os.path.join(os.path.dirname(path), POOL_DIR)
    try:
        names = os.listdir(pool)
    except OSError:
        return None
    fits = sorted((int(n.partition(".")[0]), n) for n in names
                  if n[:1].isdigit() and int(n.partition(".")[0]) >= size)
    for _, name in fits:
        mine = os.path.join(pool, f"claimed-{os.getpid()}-{threading.get_ident()}-{name}")
        try:
            os.rename(os.path.join(pool, name), mine)
        except FileNotFoundError:
            continue  # another producer took it first
        try:
            os.link(mine, path)
        finally:
            os.unlink(mine)
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    return None


class SegmentPool:
    """Keeps blanks of ``classes_for(budget)`` in ``shm_dir/.pool`` (see the module).

    ``room_needed()`` says how many bytes of the file system the store may still need; the
    pool only adds a blank when that much stays free beside it. The filler starts at the
    first ``wake()`` (the store calls it when it seals a large object: its producer may
    have taken a blank) and looks again at each one.
    """

    def __init__(self, shm_dir: pathlib.Path, budget: int, room_needed: Callable[[], int]) -> None:
        self.dir = pathlib.Path(shm_dir) / POOL_DIR
        self.budget = budget
        self.classes = classes_for(budget)
        self._room_needed = room_needed
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seq = itertools.count(1)
        #: How many times the filler looked for missing blanks.
        self.looked = 0
        self._thread: threading.Thread | None = None
        if self.classes:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            self._thread = threading.Thread(target=self._run, name="cellray-segment-pool", daemon=True)
            self._thread.start()

    def adopt(self, path: str, size: int, room_needed: int) -> bool:
        """Keep the file of a freed object that no reader ever mapped (its producer wrote it
        with ``write``, and it was only read whole, never mapped) as a blank: its pages are
        allocated already, so the next large put writes into them without the kernel
        allocating any. False, and the caller removes it, when the pool holds twice its
        budget already or the store may need the room (``room_needed`` bytes free)."""
        if size < POOL_MIN or self._stop.is_set() or not self.classes:
            return False
        held = sum(s * n for s, n in self.blanks().items())
        if held + size > 2 * self.budget or free_bytes(str(self.dir)) < room_needed:
            return False
        try:
            os.rename(path, self.dir / f"{size}.r{next(self._seq)}")
        except OSError:
            return False
        return True

    def wake(self) -> None:
        """Look for missing blanks now."""
        self._wake.set()

    def blanks(self) -> dict[int, int]:
        """Ready blanks: size class -> how many."""
        out: dict[int, int] = {}
        try:
            names = os.listdir(self.dir)
        except OSError:
            return out
        for n in names:
            if n[:1].isdigit():
                size = int(n.partition(".")[0])
                out[size] = out.get(size, 0) + 1
        return out

    def close(self) -> None:
        """Stop the filler and remove every blank."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self) -> None:
        # Nothing is allocated before the first wake: a node that never sees a large
        # object never holds a blank.
        rest: float | None = None
        while not self._stop.is_set():
            self._wake.wait(rest)
            self._wake.clear()
            if not self._stop.is_set():
                rest = None if self._fill() else _FULL_REST_S
                self.looked += 1

    def _fill(self) -> bool:
        """Make the missing blanks; False when the file system had no room to spare."""
        have = self.blanks()
        for size in self.classes:
            if have.get(size, 0) or self._stop.is_set():
                continue
            free = shutil.disk_usage(self.dir).free
            if free - size < self._room_needed():
                return False
            if not self._make(size):
                return False
        return True

    def _make(self, size: int) -> bool:
        seq = next(self._seq)
        tmp = self.dir / f"making-{seq}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)  # allocates (and zeroes) every page now
            finally:
                os.close(fd)
            os.rename(tmp, self.dir / f"{size}.{seq}")
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if e.errno in (errno.ENOSPC, errno.ENOMEM):
                logger.info("no room for a %d-byte blank segment in %s; trying again later", size, self.dir)
                return False
            if not self._stop.is_set():
                logger.warning("could not make a blank segment in %s: %s", self.dir, e)
            return False
        return True
