"""RedisSink: the GCS's rows in real Redis servers, one server per shard as in the Ray paper.

Used through ``BufferedStore`` (``storage_buffer``), which keeps the rows in memory and
hands this sink a batch every few milliseconds. Shard ``i`` lives on server ``i mod n``
(with as many servers as shards, each shard has its own), each table of a shard in one
hash, ``cellray:gcs:<shard>:<table>`` (HSET/HDEL/HGETALL); a batch goes to each of its
servers as one MULTI/EXEC pipeline, to all of them at once (one thread per server), so
the write throughput grows with the servers.

Durability is the servers': ``LocalRedisServers`` starts its own with ``appendonly yes``
and ``appendfsync everysec`` (a Redis killed loses nothing it acknowledged; the machine
crashing loses at most a second). A batch is atomic per server, not across servers.

Outages: a connection error is ``StorageUnavailableError`` (the store retries with backoff
for ``gcs_storage_timeout_s``; the client reconnects by itself once the server is back).
Every server carries a marker key, set when the GCS loads its rows and checked in every
batch's transaction (``EXISTS`` before the writes, no extra round trip): a server that
restarted without its data (no persistence) lacks it, so the sink raises
``StorageResetError`` and the store writes the rows of that server's shards again from
memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from runtime.gcs.storage import StorageError, StorageUnavailableError
from runtime.gcs.storage_buffer import Batch, StorageResetError

logger = logging.getLogger(__name__)

__all__ = ["KEY_PREFIX", "RedisSink"]

#: Every key the GCS writes starts with this.
KEY_PREFIX = "cellray:gcs:"
_MARKER = KEY_PREFIX + "marker"


def _bytes(value: bytes | str) -> bytes:
    """A reply as bytes (the client decodes nothing unless told to; this keeps mypy sure)."""
    return value if isinstance(value, bytes) else value.encode()


def _hash(shard: int, table: str) -> str:
    return f"{KEY_PREFIX}{shard}:{table}"


class RedisSink:
    """The ``Sink`` of a GCS stored in the Redis servers ``servers`` (``(host, port)``, shard order).

    ``on_lost(i)`` is called when server ``i`` cannot be reached (``LocalRedisServers.revive``
    restarts an owned server that died). Connections are made lazily; nothing raises here.
    """

    def __init__(self, servers: Sequence[tuple[str, int]], num_shards: int, *, socket_timeout_s: float = 5.0,
                 connect_timeout_s: float = 1.0, on_lost: Callable[[int], object] | None = None) -> None:
        if not servers:
            raise ValueError("RedisSink needs at least one server")
        self.servers = list(servers)
        self.num_shards = num_shards
        self.description = "redis://" + ",".join(f"{h}:{p}" for h, p in self.servers)
        self._on_lost = on_lost
        self._clients = [redis.Redis(host=h, port=p, socket_timeout=socket_timeout_s,
                                     socket_connect_timeout=connect_timeout_s, retry=Retry(NoBackoff(), 0))
                         for h, p in self.servers]
        #: Server index -> the shards it holds.
        self.shards_of = [[s for s in range(num_shards) if s % len(self.servers) == i]
                          for i in range(len(self.servers))]
        self._pool = ThreadPoolExecutor(len(self.servers), "gcs-redis") if len(self.servers) > 1 else None

    def server_of(self, shard: int) -> int:
        """The index of the server that holds ``shard``: ``shard mod n``."""
        return shard % len(self.servers)

    def load(self) -> Iterator[tuple[int, str, bytes, bytes]]:
        """Every row of every shard; marks each server (an empty one gets the marker)."""
        rows: list[tuple[int, str, bytes, bytes]] = []
        for i, client in enumerate(self._clients):
            with self._errors(i):
                for shard in self.shards_of[i]:
                    prefix = _hash(shard, "")
                    for name in client.scan_iter(match=prefix + "*", _type="HASH"):
                        table = name.decode()[len(prefix):]
                        for key, value in client.hgetall(name).items():
                            rows.append((shard, table, _bytes(key), _bytes(value)))
                client.set(_MARKER, b"1")
        return iter(rows)

    def write(self, batch: Batch) -> None:
        """Save ``batch``: one MULTI/EXEC pipeline per server, all servers at once."""
        by_server: dict[int, list[tuple[int, str, bytes, bytes | None]]] = {}
        for (shard, table, key), value in batch.items():
            by_server.setdefault(self.server_of(shard), []).append((shard, table, key, value))
        if self._pool is None or len(by_server) == 1:
            for i, rows in by_server.items():
                self._write_server(i, rows)
            return
        futures = [self._pool.submit(self._write_server, i, rows) for i, rows in by_server.items()]
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        resets = [e for e in errors if isinstance(e, StorageResetError)]
        if resets:
            shards = tuple(s for e in resets for s in e.shards)
            raise StorageResetError("; ".join(str(e) for e in resets), shards=shards,
                                    backend=self.description)
        if errors:
            raise errors[0]

    def check(self) -> None:
        """PING every server."""
        for i, client in enumerate(self._clients):
            with self._errors(i):
                client.ping()

    def close(self) -> None:
        """Close the connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for client in self._clients:
            client.close()

    def __repr__(self) -> str:
        return f"<RedisSink {self.description}>"

    def _write_server(self, i: int, rows: list[tuple[int, str, bytes, bytes | None]]) -> None:
        client = self._clients[i]
        with self._errors(i):
            puts: dict[str, dict[bytes, bytes]] = {}
            deletes: dict[str, list[bytes]] = {}
            for shard, table, key, value in rows:
                if value is None:
                    deletes.setdefault(_hash(shard, table), []).append(key)
                else:
                    puts.setdefault(_hash(shard, table), {})[key] = value
            pipe = client.pipeline(transaction=True)
            pipe.exists(_MARKER)
            for name, mapping in puts.items():
                pipe.hset(name, mapping=mapping)  # type: ignore[arg-type]  # bytes keys are fine
            for name, keys in deletes.items():
                pipe.hdel(name, *keys)
            pipe.set(_MARKER, b"1")
            marked = pipe.execute()[0]
        if not marked:
            host, port = self.servers[i]
            raise StorageResetError(f"Redis {host}:{port} came back without the GCS's rows",
                                    shards=tuple(self.shards_of[i]), backend=self.description)

    def _errors(self, i: int) -> _RedisErrors:
        return _RedisErrors(self, i)


class _RedisErrors:
    """Turn the redis client's errors on server ``i`` into ``StorageError`` s."""

    def __init__(self, sink: RedisSink, i: int) -> None:
        self.sink, self.i = sink, i

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, err: BaseException | None, tb: object) -> None:
        if err is None or not isinstance(err, redis.RedisError):
            return
        host, port = self.sink.servers[self.i]
        if isinstance(err, (redis.ConnectionError, redis.TimeoutError)):
            if self.sink._on_lost is not None:
                self.sink._on_lost(self.i)
            raise StorageUnavailableError(f"Redis {host}:{port}: {err}", kind=type(err).__name__,
                                          backend=self.sink.description) from err
        # A reply error names its kind first: OOM, MISCONF, READONLY, NOPERM ...
        kind = str(err).split(" ", 1)[0] if isinstance(err, redis.ResponseError) else type(err).__name__
        raise StorageError(f"Redis {host}:{port} refused a write: {err}", kind=kind,
                           backend=self.sink.description) from err
