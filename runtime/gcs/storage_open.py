"""From the ``gcs_storage`` and ``redis_shards`` settings to the storages of a GCS's shards.

``open_storage(settings, session_dir, num_shards)`` returns a ``GcsStorage``: one
``Storage`` per shard for ``GcsState(storage_factory=gcs_storage.factory())``, the
backend's description (``Admin.Ping``'s ``storage``), the cluster id, and what the
backend owns (a write-behind store, local Redis servers), closed by ``close()``::

    storage = open_storage(settings, session_dir, num_shards=4)
    state = GcsState(num_shards=4, storage_factory=storage.factory())
    ...
    state.close()       # closes the shards: the last batch is saved
    storage.close()     # then the Redis servers it started are stopped

Every backend keeps, in shard 0's hidden table ``meta`` (not one of the GCS tables, so
no client sees or writes it):

- ``cluster_id``: made once (uuid4 hex) when the storage is new, so a GCS restarted from
  the same durable storage is the same cluster, and one on new storage (always so with
  ``memory``) is a new one: nodes and drivers compare it when they reconnect;
- ``num_shards``: a key's shard depends on the number of shards, so a GCS started on the
  storage with another number would not find its rows: it is refused with a clear error.
"""

from __future__ import annotations

import logging
import pathlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.config import Settings
from runtime.exceptions import ConfigError
from runtime.gcs.redis_servers import LocalRedisServers
from runtime.gcs.storage import InMemoryStorage, Storage, StorageError
from runtime.gcs.storage_buffer import BufferedStore, Sink
from runtime.gcs.storage_redis import RedisSink
from runtime.gcs.storage_sqlite import SqliteSink
from runtime.gcs.storage_url import StorageSpec, parse_storage

logger = logging.getLogger(__name__)

__all__ = ["META_TABLE", "GcsStorage", "open_spec", "open_storage", "shard_count"]

#: The hidden table of shard 0 that holds the cluster id and the number of shards.
META_TABLE = "meta"
_CLUSTER_ID = b"cluster_id"
_NUM_SHARDS = b"num_shards"


@dataclass
class GcsStorage:
    """The opened storage of one GCS: its shards' storages and what it must close."""

    #: One ``Storage`` per shard, in shard order.
    storages: list[Storage]
    #: The backend for people: ``memory``, ``sqlite:///path``, ``redis://h:p,h:p``.
    description: str
    #: The cluster's id (uuid4 hex), kept in the storage.
    cluster_id: str = ""
    #: The write-behind store of a persistent backend (None for ``memory``).
    store: BufferedStore | None = None
    #: The Redis servers this GCS started (``redis_shards``), stopped by ``close()``.
    servers: LocalRedisServers | None = None
    #: True when the storage was new (no cluster id yet): a new cluster.
    created: bool = False
    _closed: bool = field(default=False, repr=False)

    def factory(self) -> Callable[[], Storage]:
        """A ``storage_factory`` for ``GcsState`` that hands out the shards in order, once."""
        return iter(self.storages).__next__

    def on_failure(self, callback: Callable[[StorageError], object]) -> None:
        """Call ``callback(error)`` once, from the storage's thread, if the backend is lost for good
        (unreachable for ``gcs_storage_timeout_s``); never for ``memory``."""
        if self.store is not None:
            self.store.on_failure(callback)

    def flush(self, timeout: float | None = None) -> None:
        """Return once every write so far is saved (a no-op for ``memory``)."""
        if self.store is not None:
            self.store.flush(timeout)

    def close(self) -> None:
        """Close the shards (saving the last batch; ``GcsState.close`` may have done so) and
        stop the Redis servers this GCS started."""
        if self._closed:
            return
        self._closed = True
        try:
            for storage in self.storages:
                storage.close()
        finally:
            if self.servers is not None:
                self.servers.stop()


def shard_count(settings: Settings) -> int:
    """How many shards the GCS the settings describe runs: one per Redis server, as in the paper
    (``redis_shards`` local ones, or the servers ``gcs_storage`` names), else ``gcs_shards``."""
    if settings.redis_shards > 0:
        return settings.redis_shards
    spec = parse_storage(settings.gcs_storage)
    return len(spec.servers) if spec.kind == "redis" else settings.gcs_shards


def open_storage(settings: Settings, session_dir: str | pathlib.Path, num_shards: int) -> GcsStorage:
    """Open the storage the settings name (``gcs_storage``, ``redis_shards``) for ``num_shards``.

    ``sqlite`` is ``<session_dir>/gcs.db``; ``redis_shards`` > 0 starts that many local
    Redis servers with their data in ``<session_dir>/redis/``.

    Raises ``ConfigError`` for a bad setting or a storage written with another number of
    shards, ``StorageUnavailableError`` when Redis stays unreachable for
    ``gcs_storage_timeout_s``, and ``StorageError`` when the backend cannot be opened.
    """
    spec = parse_storage(settings.gcs_storage)
    servers = None
    if settings.redis_shards > 0:
        servers = LocalRedisServers(settings.redis_shards, pathlib.Path(session_dir) / "redis",
                                    host="127.0.0.1", start_timeout_s=settings.start_timeout_s)
        spec = StorageSpec("redis", servers=tuple(servers.start()))
    try:
        storage = open_spec(spec, num_shards, session_dir=session_dir,
                            flush_s=settings.gcs_storage_flush_ms / 1000,
                            batch_rows=settings.gcs_storage_batch_rows,
                            timeout_s=settings.gcs_storage_timeout_s,
                            on_lost=servers.revive if servers is not None else None)
    except BaseException:
        if servers is not None:
            servers.stop()
        raise
    if servers is not None:
        storage.servers = servers
        storage.description += f" ({servers.count} local redis-server processes)"
    return storage


def open_spec(spec: StorageSpec, num_shards: int, *, session_dir: str | pathlib.Path = "",
              flush_s: float = 0.005, batch_rows: int = 5000, timeout_s: float = 30.0,
              on_lost: Callable[[int], object] | None = None) -> GcsStorage:
    """Open the backend ``spec`` names for ``num_shards`` shards; see ``open_storage``."""
    if spec.kind == "memory":
        storage = GcsStorage([InMemoryStorage() for _ in range(num_shards)], "memory")
    else:
        sink: Sink
        if spec.kind == "sqlite":
            if not spec.path and not session_dir:
                raise ConfigError("gcs_storage 'sqlite' keeps gcs.db in the session directory, and none was "
                                  "given; name a file: sqlite:///abs/path.db", setting="gcs_storage")
            sink = SqliteSink(spec.path or pathlib.Path(session_dir) / "gcs.db", lock_timeout_s=timeout_s)
        else:
            sink = RedisSink(spec.servers, num_shards, on_lost=on_lost)
        try:
            store = BufferedStore(sink, num_shards, flush_s=flush_s, batch_rows=batch_rows,
                                  timeout_s=timeout_s)
        except BaseException:
            sink.close()
            raise
        storage = GcsStorage([store.shard(i) for i in range(num_shards)], store.description, store=store)
    try:
        _identify(storage, num_shards)
    except BaseException:
        storage.close()
        raise
    return storage


def _identify(storage: GcsStorage, num_shards: int) -> None:
    """Read the cluster id and check the number of shards; make both on new storage."""
    meta = storage.storages[0]
    written = meta.get(META_TABLE, _NUM_SHARDS)
    if written is not None and int(written) != num_shards:
        raise ConfigError(
            f"GCS storage {storage.description} was written by a GCS with {int(written)} shards, and this "
            f"one runs {num_shards}: a key's shard depends on their number, so its rows would not be found. "
            f"Start the GCS with --num-shards {int(written)} (setting gcs_shards), or give it new storage",
            setting="gcs_shards")
    cluster_id = meta.get(META_TABLE, _CLUSTER_ID)
    if cluster_id is None:
        storage.created = True
        cluster_id = uuid.uuid4().hex.encode()
        meta.put(META_TABLE, _CLUSTER_ID, cluster_id)
        meta.put(META_TABLE, _NUM_SHARDS, str(num_shards).encode())
        storage.flush()  # the id is durable before anyone is told it
    storage.cluster_id = cluster_id.decode()
