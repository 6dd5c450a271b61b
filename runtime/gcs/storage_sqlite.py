"""SqliteSink: the GCS's rows in one SQLite database file (WAL), written a batch at a time.

Used through ``BufferedStore`` (``storage_buffer``), which keeps the rows in memory and
hands this sink a batch every few milliseconds; the sink writes each batch as one
transaction (group commit), so the task path never waits for the disk.

Why one file for all shards, not one per shard: the GCS is one process with one writer
thread, and SQLite has one writer per file anyway, so more files would add commits and
file handles and no throughput. One file also commits a batch that spans shards
atomically (an actor's row and its name live in different shards and are saved together
or not at all), and it is one thing to name, back up or delete.

Schema: ``rows(shard, tbl, key, value)``, unique on ``(shard, tbl, key)``; rows load in
insertion order (``rowid``: an update keeps its row's place).

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL``: a committed batch survives
the GCS process being killed; an OS crash or power loss may also take the batches
committed since the last WAL checkpoint (SQLite's documented trade for NORMAL in WAL
mode). ``synchronous_full=True`` makes every batch survive those too, at one fsync per batch.

A lock file (``<path>.lock``, ``flock``) keeps a second GCS off a database in use; the
kernel drops the lock when its holder dies, even by ``kill -9``, so a GCS restarted on
the same file waits (up to ``lock_timeout_s``) only for one that is still stopping.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pathlib
import sqlite3
import time
from collections.abc import Iterator
from typing import IO

from runtime.gcs.storage import StorageError
from runtime.gcs.storage_buffer import Batch

logger = logging.getLogger(__name__)

__all__ = ["SqliteSink"]

_SCHEMA = """CREATE TABLE IF NOT EXISTS rows (
    shard INTEGER NOT NULL, tbl TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
    UNIQUE (shard, tbl, key))"""
_UPSERT = ("INSERT INTO rows (shard, tbl, key, value) VALUES (?, ?, ?, ?) "
           "ON CONFLICT (shard, tbl, key) DO UPDATE SET value = excluded.value")
_DELETE = "DELETE FROM rows WHERE shard = ? AND tbl = ? AND key = ?"


class SqliteSink:
    """The ``Sink`` of a GCS stored in the SQLite database at ``path`` (created if missing).

    Raises ``StorageError`` when the file cannot be opened or is locked by another GCS
    for longer than ``lock_timeout_s``.
    """

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout_s: float = 10.0,
                 synchronous_full: bool = False) -> None:
        self.path = pathlib.Path(path).absolute()
        self.description = f"sqlite://{self.path}"
        self._lock = _lock_file(self.path, lock_timeout_s, self.description)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={'FULL' if synchronous_full else 'NORMAL'}")
            self._conn.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            self._lock.close()
            raise self._error("could not open the database", err) from err

    def load(self) -> Iterator[tuple[int, str, bytes, bytes]]:
        """Every row, in insertion order."""
        try:
            rows = self._conn.execute("SELECT shard, tbl, key, value FROM rows ORDER BY rowid").fetchall()
        except sqlite3.Error as err:
            raise self._error("could not read the database", err) from err
        return ((int(s), str(t), bytes(k), bytes(v)) for s, t, k, v in rows)

    def write(self, batch: Batch) -> None:
        """Save ``batch`` in one transaction; ``StorageError`` (e.g. kind ``SQLITE_FULL``) when not."""
        puts = [(s, t, k, v) for (s, t, k), v in batch.items() if v is not None]
        deletes = [(s, t, k) for (s, t, k), v in batch.items() if v is None]
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if puts:
                    self._conn.executemany(_UPSERT, puts)
                if deletes:
                    self._conn.executemany(_DELETE, deletes)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise self._error(f"could not save {len(batch)} rows", err) from err

    def check(self) -> None:
        """Nothing to probe: the file is local (a failing disk shows in ``write``)."""

    def close(self) -> None:
        """Close the database (the WAL is checkpointed) and release the lock file."""
        try:
            self._conn.close()
        except sqlite3.Error as err:
            logger.warning("closing %s: %s", self.description, err)
        self._lock.close()

    def __repr__(self) -> str:
        return f"<SqliteSink {self.description}>"

    def _error(self, what: str, err: BaseException) -> StorageError:
        kind = getattr(err, "sqlite_errorname", "") or type(err).__name__
        hint = {"SQLITE_FULL": "; free disk space (or raise the quota) on that file system",
                "SQLITE_READONLY": "; the file or its directory is not writable",
                "SQLITE_CANTOPEN": "; check the path and its directory's permissions"}.get(kind, "")
        return StorageError(f"GCS storage {self.description}: {what}: {err} ({kind}){hint}",
                            kind=kind, backend=self.description)


def _lock_file(path: pathlib.Path, timeout_s: float, description: str) -> IO[str]:
    """Hold ``<path>.lock`` exclusively (the pid written in it), waiting up to ``timeout_s``."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a+")  # noqa: SIM115 - held open for the sink's life
    except OSError as err:
        raise StorageError(f"GCS storage {description}: cannot create the lock file {lock_path}: {err}",
                           kind=type(err).__name__, backend=description) from err
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.seek(0)
                holder = lock.read().strip() or "unknown"
                lock.close()
                raise StorageError(
                    f"GCS storage {description} is in use by another GCS (pid {holder}, lock file "
                    f"{lock_path}) and stayed so for {timeout_s:g} s; stop that GCS or use another "
                    "file", kind="locked", backend=description) from None
            time.sleep(0.05)
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock
