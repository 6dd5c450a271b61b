"""Where GCS tables live: a small synchronous ``Storage`` protocol and its in-memory backend.

The GCS state owns one ``Storage`` per shard and talks to it only through this protocol,
so a persistent backend is one more class and nothing else changes. Calls are
synchronous and short: the GCS runs them on its event loop between awaits, which is what
makes a snapshot and the changes after it consistent.

The backends::

    InMemoryStorage          this module: tests, and a GCS that may forget (``memory``)
    BufferedStore.shard(i)   storage_buffer: every row in memory, writes saved in batches to
      ├─ SqliteSink          storage_sqlite: one WAL database file (``sqlite``, the default)
      └─ RedisSink           storage_redis: one Redis server per shard (``redis://h:p,h:p``)
    LocalRedisServers        redis_servers: the redis-server processes a GCS starts and owns
    open_storage             storage_open: the ``gcs_storage`` setting -> the shards' storages

Errors: ``StorageError`` (a write the backend refused: disk full), with
``StorageUnavailableError`` under it (the backend cannot be reached: Redis down).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from runtime.exceptions import ClientClosedError, ClusterError

logger = logging.getLogger(__name__)

__all__ = ["InMemoryStorage", "Storage", "StorageError", "StorageUnavailableError"]


class StorageError(ClusterError, RuntimeError):
    """The GCS storage backend failed: a write it refused (disk full, out of memory).

    ``kind`` names the failure for logging once per kind (``SQLITE_FULL``, ``OOM``);
    ``backend`` is the backend's description (``sqlite:///path``).
    """

    def __init__(self, message: str = "", *, kind: str = "", backend: str = "", **fields: Any) -> None:
        super().__init__(message, kind=kind, backend=backend, **fields)
        self.kind, self.backend = kind, backend


class StorageUnavailableError(StorageError, ConnectionError):
    """The GCS storage backend cannot be reached (a Redis server is down or restarting)."""


@runtime_checkable
class Storage(Protocol):
    """A key-value store partitioned into named tables; keys and values are bytes.

    Implementations keep the insertion order of ``items`` where they can (the GCS uses it
    for "oldest first" only as a hint; it never relies on it for correctness).
    """

    def get(self, table: str, key: bytes) -> bytes | None:
        """The value under ``key`` in ``table``, or None when there is none."""
        ...

    def put(self, table: str, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key`` in ``table``, replacing any previous value."""
        ...

    def delete(self, table: str, key: bytes) -> None:
        """Remove ``key`` from ``table``; a missing key is not an error."""
        ...

    def items(self, table: str) -> Iterable[tuple[bytes, bytes]]:
        """Every ``(key, value)`` pair of ``table`` (a snapshot: safe to mutate while iterating)."""
        ...

    def close(self) -> None:
        """Release the backend's resources; later calls raise ``ClientClosedError``."""
        ...


class InMemoryStorage:
    """``Storage`` in process memory: one dict per table. The default backend.

    Examples
    --------
    >>> s = InMemoryStorage()
    >>> s.put("kv", b"k", b"v")
    >>> s.get("kv", b"k"), s.get("kv", b"missing")
    (b'v', None)
    >>> list(s.items("kv"))
    [(b'k', b'v')]
    """

    def __init__(self) -> None:
        self._tables: dict[str, dict[bytes, bytes]] = {}
        self._closed = False

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._table(table).get(key)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._table(table)[key] = value

    def delete(self, table: str, key: bytes) -> None:
        self._table(table).pop(key, None)

    def items(self, table: str) -> list[tuple[bytes, bytes]]:
        return list(self._table(table).items())

    def close(self) -> None:
        self._tables.clear()
        self._closed = True

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(rows)}" for name, rows in sorted(self._tables.items()))
        return f"<InMemoryStorage {sizes or 'empty'}>"

    def _table(self, table: str) -> dict[bytes, bytes]:
        if self._closed:
            raise ClientClosedError(f"InMemoryStorage is closed; cannot use table {table!r} "
                                    "(the GCS is shutting down)")
        rows = self._tables.get(table)
        if rows is None:
            rows = self._tables[table] = {}
        return rows
