"""Write-behind for the persistent GCS backends: every row in memory, writes saved in batches.

The GCS calls its ``Storage`` on its event loop, so a backend that waited for a disk or
a network round trip on every write would slow every task. ``BufferedStore`` keeps every
row of every shard in memory and hands the writes to a ``Sink`` (SQLite, Redis) from one
background thread, in batches:

- reads never leave the process: the GCS is the only writer of its storage, so the copy
  in memory is always the current one (it is loaded from the sink once, at start);
- a write updates the copy and queues ``(shard, table, key) -> value`` (None: deleted);
  the thread takes the queue every ``flush_s`` seconds (setting ``gcs_storage_flush_ms``),
  or at once when ``batch_rows`` rows wait (``gcs_storage_batch_rows``), coalesced (the
  last write of a key wins), and the sink writes it whole: one SQLite transaction, or one
  MULTI/EXEC pipeline per Redis server (group commit);
- ``flush()`` returns once everything queued is saved; ``close()`` saves everything.

What a crash costs: a GCS killed at any moment (``kill -9``) loses the writes of at most
the last batch window, ``flush_s`` plus the time to write the batch in flight (a few
milliseconds). What the sink has written survives the process (the sinks' docstrings say
what survives the machine).

When the sink fails:

``StorageUnavailableError`` (Redis down or restarting)
    Writes stay queued in memory and the thread retries with backoff; one warning is
    logged when the outage starts and one line when it ends. When idle, the thread
    checks the sink every ``idle_check_s`` (``Sink.check``), so an outage is noticed
    without writes too. After ``timeout_s`` (``gcs_storage_timeout_s``) without success
    the store has *failed*: one error line is logged, every later write raises the
    error, and the ``on_failure`` callbacks run once (the GCS process then exits).
``StorageResetError`` (a Redis server came back without its data)
    The rows of the shards it holds are queued again from memory, so nothing is lost.
another ``StorageError`` (SQLite: disk full)
    Logged once per ``kind``; writes are refused with the error (the call that wanted to
    write gets it, as UNAVAILABLE over gRPC) until a retry of the queued batch succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from runtime.exceptions import ClientClosedError
from runtime.gcs.storage import StorageError, StorageUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["Batch", "BufferedStore", "RowKey", "ShardStorage", "Sink", "StorageResetError"]

#: Where a row lives: ``(shard, table, key)``.
RowKey = tuple[int, str, bytes]
#: A batch of writes: the row's new value, or None when it was deleted.
Batch = Mapping[RowKey, bytes | None]

_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 1.0


class StorageResetError(StorageUnavailableError):
    """A sink's server came back without the rows it held: ``shards`` must be written again."""

    def __init__(self, message: str = "", *, shards: tuple[int, ...] = (), kind: str = "reset",
                 backend: str = "") -> None:
        super().__init__(message, kind=kind, backend=backend, shards=shards)
        self.shards = shards


class Sink(Protocol):
    """Where a ``BufferedStore`` saves its rows. Called from one thread at a time."""

    #: The backend, for people and ``Ping``: ``sqlite:///path``, ``redis://h:p,h:p``.
    description: str

    def load(self) -> Iterable[tuple[int, str, bytes, bytes]]:
        """Every saved row as ``(shard, table, key, value)``, oldest first where known.

        Raises ``StorageUnavailableError`` when the backend cannot be reached (retried)."""
        ...

    def write(self, batch: Batch) -> None:
        """Save ``batch`` whole; raise ``StorageError`` (or a subclass) when it could not."""
        ...

    def check(self) -> None:
        """A cheap probe when idle; raise ``StorageUnavailableError`` when unreachable."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


class BufferedStore:
    """Every row of ``num_shards`` shards in memory, saved to ``sink`` in batches.

    ``shard(i)`` is shard ``i``'s ``Storage``; closing all of them closes the store.
    Raises ``StorageUnavailableError`` when the sink cannot be loaded within ``timeout_s``,
    and ``StorageError`` when the sink holds rows of a shard ``>= num_shards``.
    """

    def __init__(self, sink: Sink, num_shards: int, *, flush_s: float = 0.005, batch_rows: int = 5000,
                 timeout_s: float = 30.0, idle_check_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink, self.num_shards = sink, num_shards
        self.flush_s, self.batch_rows = flush_s, batch_rows
        self.timeout_s, self.idle_check_s = timeout_s, idle_check_s
        self._clock = clock
        self._rows: list[dict[str, dict[bytes, bytes]]] = [{} for _ in range(num_shards)]
        for shard, table, key, value in _retry_unavailable(sink.load, timeout_s, sink.description):
            if not 0 <= shard < num_shards:
                raise StorageError(
                    f"GCS storage {sink.description} holds rows of shard {shard}, but this GCS runs "
                    f"{num_shards} shards: start it with the number of shards the storage was written "
                    "with (--num-shards), or give it new storage", kind="shards", backend=sink.description)
            self._rows[shard].setdefault(table, {})[key] = value
        # A plain Lock: the task path's put() enters it with C calls only (a Condition's own
        # __enter__ is Python code); the Condition on it is for the writer and flush().
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: dict[RowKey, bytes | None] = {}
        self._writing = 0  # rows of the batch being written now
        self._flush_waiters = 0
        self._closing = False
        self._error: StorageError | None = None  # writes are refused while set
        self._failure: StorageError | None = None  # for good: the sink was unreachable too long
        self._outage_since: float | None = None
        self._logged_kinds: set[str] = set()
        self._callbacks: list[Callable[[StorageError], object]] = []
        self._open_views = num_shards
        #: Rows saved and batches written since start (``statistics()``).
        self.rows_saved = self.batches = 0
        self._thread = threading.Thread(target=self._run, name="gcs-storage", daemon=True)
        self._thread.start()

    @property
    def description(self) -> str:
        """The sink's description: ``sqlite:///path``, ``redis://h:p,h:p``."""
        return self.sink.description

    @property
    def failure(self) -> StorageError | None:
        """The error that failed the store for good, or None."""
        return self._failure

    def shard(self, index: int) -> ShardStorage:
        """Shard ``index``'s ``Storage``."""
        return ShardStorage(self, index)

    def on_failure(self, callback: Callable[[StorageError], object]) -> None:
        """Call ``callback(error)`` once, from the storage thread, when the store fails for good."""
        with self._cond:
            failure = self._failure
            if failure is None:
                self._callbacks.append(callback)
        if failure is not None:
            callback(failure)

    def statistics(self) -> dict[str, object]:
        """A snapshot for debugging and the bench: rows kept, queued, saved, batches, errors."""
        with self._cond:
            return {"backend": self.description, "rows": sum(len(t) for s in self._rows for t in s.values()),
                    "pending": len(self._pending) + self._writing, "rows_saved": self.rows_saved,
                    "batches": self.batches, "error": str(self._error or self._failure or "")}

    # ---- the Storage calls (the GCS's event loop) ----

    def get(self, shard: int, table: str, key: bytes) -> bytes | None:
        rows = self._rows[shard].get(table)
        return None if rows is None else rows.get(key)

    def items(self, shard: int, table: str) -> list[tuple[bytes, bytes]]:
        return list(self._rows[shard].get(table, {}).items())

    def put(self, shard: int, table: str, key: bytes, value: bytes) -> None:
        with self._lock:
            if self._failure is not None or self._error is not None or self._closing:
                self._refuse()
            rows = self._rows[shard].get(table)
            if rows is None:
                rows = self._rows[shard][table] = {}
            rows[key] = value
            pending = self._pending
            pending[(shard, table, key)] = value
            if len(pending) == 1 or len(pending) >= self.batch_rows:
                self._cond.notify()

    def delete(self, shard: int, table: str, key: bytes) -> None:
        with self._lock:
            if self._failure is not None or self._error is not None or self._closing:
                self._refuse()
            rows = self._rows[shard].get(table)
            if rows is not None and rows.pop(key, None) is not None:
                pending = self._pending
                pending[(shard, table, key)] = None
                if len(pending) == 1 or len(pending) >= self.batch_rows:
                    self._cond.notify()

    def flush(self, timeout: float | None = None) -> None:
        """Return once every write queued so far is saved.

        Raises the store's ``StorageError`` when writes fail (or it failed for good), and
        ``StorageUnavailableError`` when ``timeout`` passes first."""
        with self._cond:
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                done = self._cond.wait_for(lambda: (not self._pending and not self._writing)
                                           or self._error is not None or self._failure is not None
                                           or not self._thread.is_alive(), timeout)
            finally:
                self._flush_waiters -= 1
            error = self._failure or self._error
            if error is not None:
                raise error
            if not done or self._pending:
                raise StorageUnavailableError(
                    f"GCS storage {self.description}: {len(self._pending) + self._writing} writes not saved "
                    f"within {timeout} s", kind="flush timeout", backend=self.description)

    def close(self) -> None:
        """Save what is queued (once more if the sink is failing, then give up), stop the thread."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._thread.join(self.timeout_s + 10.0)
        if self._thread.is_alive():
            logger.error("GCS storage %s: the writer thread did not stop; %d writes may be lost",
                         self.description, len(self._pending))
        self.sink.close()

    def _view_closed(self) -> None:
        with self._cond:
            self._open_views -= 1
            last = self._open_views == 0
        if last:
            self.close()

    def _refuse(self) -> None:
        """Raise why writes are refused (the store failed, writes fail, or it is closed)."""
        if self._failure is not None:
            raise self._failure
        if self._error is not None:
            raise self._error
        if self._closing:
            raise ClientClosedError(f"GCS storage {self.description} is closed (the GCS is shutting down)")

    # ---- the writer thread ----

    def _run(self) -> None:
        backoff = _BACKOFF_MIN_S
        while True:
            with self._cond:
                batch = self._next_batch()
            if batch is None:
                return
            error: StorageError | None = None
            try:
                if batch:
                    self.sink.write(batch)
                else:
                    self.sink.check()
            except StorageError as err:
                error = err
            except Exception as err:  # a sink's bug must not kill the writer silently
                logger.exception("GCS storage %s: unexpected error from the backend", self.description)
                error = StorageError(f"GCS storage {self.description}: {err!r}", kind=type(err).__name__,
                                     backend=self.description)
            callbacks = self._after_attempt(batch, error)
            failure = self._failure
            if failure is not None:
                for callback in callbacks:
                    try:
                        callback(failure)
                    except Exception:  # one bad callback must not stop the others
                        logger.exception("GCS storage failure callback failed")
                return
            if error is not None and self._closing and not isinstance(error, StorageResetError):
                return
            if error is not None and not isinstance(error, StorageResetError):
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            elif error is None:
                backoff = _BACKOFF_MIN_S

    def _next_batch(self) -> dict[RowKey, bytes | None] | None:
        """Wait for work (under the lock): a batch, ``{}`` for an idle check, None to stop."""
        while not self._pending and not self._closing:
            if not self._cond.wait(self.idle_check_s) and not self._pending:
                return {}
        if not self._pending:
            return None  # closing, nothing left
        deadline = self._clock() + self.flush_s
        while len(self._pending) < self.batch_rows and not self._closing and not self._flush_waiters:
            left = deadline - self._clock()
            if left <= 0:
                break
            self._cond.wait(left)
        batch, self._pending = self._pending, {}
        self._writing = len(batch)
        return batch

    def _after_attempt(self, batch: dict[RowKey, bytes | None],
                       error: StorageError | None) -> list[Callable[[StorageError], object]]:
        """Book-keeping after a write or check; the failure callbacks to run, if it failed now."""
        with self._cond:
            self._writing = 0
            try:
                if error is None:
                    self._succeeded(batch)
                    return []
                for key, value in batch.items():  # newer writes of the same row stay
                    self._pending.setdefault(key, value)
                return self._failed(error)
            finally:
                self._cond.notify_all()

    def _succeeded(self, batch: Mapping[RowKey, bytes | None]) -> None:
        if batch:
            self.rows_saved += len(batch)
            self.batches += 1
        if self._outage_since is not None:
            logger.warning("GCS storage %s is reachable again after %.1f s; buffered writes saved",
                           self.description, self._clock() - self._outage_since)
            self._outage_since = None
        if self._error is not None:
            logger.warning("GCS storage %s accepts writes again (after: %s)", self.description, self._error)
            self._error = None
        self._logged_kinds.clear()

    def _failed(self, error: StorageError) -> list[Callable[[StorageError], object]]:
        now = self._clock()
        if isinstance(error, StorageResetError):
            rows = 0
            for shard in error.shards:
                for table, table_rows in self._rows[shard].items():
                    for key, value in table_rows.items():
                        rows += 1
                        self._pending.setdefault((shard, table, key), value)
            logger.warning("GCS storage %s: %s; writing its %d rows again from memory",
                           self.description, error, rows)
            return []
        if isinstance(error, StorageUnavailableError):
            if self._outage_since is None:
                self._outage_since = now
                logger.warning("GCS storage %s is unreachable (%s); keeping writes in memory and retrying "
                               "for up to %g s", self.description, error, self.timeout_s)
            elif now - self._outage_since >= self.timeout_s and not self._closing:
                lost, down = len(self._pending), now - self._outage_since
                self._failure = StorageUnavailableError(
                    f"GCS storage {self.description} has been unreachable for {down:.1f} s "
                    f"(gcs_storage_timeout_s={self.timeout_s:g}; last error: {error}); {lost} writes were "
                    "not saved. Check that the server is running and reachable, then restart the GCS on the "
                    "same storage", kind=error.kind, backend=self.description)
                logger.error("%s", self._failure)
                callbacks, self._callbacks = self._callbacks, []
                return callbacks
        else:
            if error.kind not in self._logged_kinds:
                self._logged_kinds.add(error.kind)
                logger.error("GCS storage %s refused a write (%s); refusing writes and retrying until it "
                             "accepts them", self.description, error)
            self._error = error
        if self._closing:
            logger.error("GCS storage %s: closing while it fails; %d writes were not saved",
                         self.description, len(self._pending))
        return []


class ShardStorage:
    """One shard of a ``BufferedStore``, as the ``Storage`` protocol (``GcsState`` holds these)."""

    def __init__(self, store: BufferedStore, index: int) -> None:
        self.store, self.index = store, index
        self._closed = False

    def get(self, table: str, key: bytes) -> bytes | None:
        if self._closed:
            self._check(table)
        rows = self.store._rows[self.index].get(table)  # the hot path: one call less
        return None if rows is None else rows.get(key)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        if self._closed:
            self._check(table)
        self.store.put(self.index, table, key, value)

    def delete(self, table: str, key: bytes) -> None:
        self._check(table)
        self.store.delete(self.index, table, key)

    def items(self, table: str) -> list[tuple[bytes, bytes]]:
        self._check(table)
        return self.store.items(self.index, table)

    def close(self) -> None:
        """Close this shard; the store is flushed and closed with its last shard."""
        if not self._closed:
            self._closed = True
            self.store._view_closed()

    def __repr__(self) -> str:
        return f"<ShardStorage {self.index} of {self.store.description}>"

    def _check(self, table: str) -> None:
        if self._closed:
            raise ClientClosedError(f"shard {self.index} of GCS storage {self.store.description} is closed; "
                                    f"cannot use table {table!r} (the GCS is shutting down)")


def _retry_unavailable(load: Callable[[], Iterable[tuple[int, str, bytes, bytes]]], timeout_s: float,
                       description: str) -> list[tuple[int, str, bytes, bytes]]:
    """``load()``, retried with backoff while the backend is unavailable, for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    backoff, warned = _BACKOFF_MIN_S, False
    while True:
        try:
            return list(load())
        except StorageUnavailableError as err:
            if time.monotonic() + backoff > deadline:
                raise StorageUnavailableError(
                    f"GCS storage {description} could not be read within {timeout_s:g} s "
                    f"(gcs_storage_timeout_s; last error: {err}). Is the server running?",
                    kind=err.kind, backend=description) from err
            if not warned:
                warned = True
                logger.warning("GCS storage %s is unreachable (%s); retrying for up to %g s",
                               description, err, timeout_s)
            time.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
