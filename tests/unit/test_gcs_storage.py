"""The GCS storage backends: each one against the ``Storage`` protocol, table by table.

The same checks run on ``memory``, ``sqlite`` (a file in tmp_path) and ``redis`` (two real
local redis-server processes, started and stopped by each test that needs them). Without
redis-server the Redis cases skip and say why, except in CI (``CI=true``, as ``.ci/run``
runs), where ``.ci/run`` installs it and a missing server fails them. The write-behind
machinery (batches, outages, failures) is driven through a fake sink; nothing sleeps:
tests wait on state with ``wait_for`` or on ``flush()``.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sqlite3
import threading
from collections.abc import Callable, Iterator

import pytest
import redis

from runtime import config
from runtime.exceptions import ClientClosedError, ConfigError
from runtime.gcs.redis_servers import LocalRedisServers, redis_server_path
from runtime.gcs.state import TABLES, GcsState
from runtime.gcs.storage import Storage, StorageError, StorageUnavailableError
from runtime.gcs.storage_buffer import Batch, BufferedStore, StorageResetError
from runtime.gcs.storage_open import META_TABLE, GcsStorage, open_spec
from runtime.gcs.storage_sqlite import SqliteSink
from runtime.gcs.storage_url import StorageSpec, parse_storage
from runtime.protocol import gcs_pb2
from runtime.testing.wait import wait_for

pytestmark = pytest.mark.timeout(60)

IN_CI = os.environ.get("CI", "").lower() == "true"


def need_redis() -> None:
    """Skip (fail in CI) when redis-server is not installed."""
    if redis_server_path() is None:
        why = ("redis-server is not installed, so the Redis backend is not tested here; install it with "
               "`apt-get install -y redis-server`")
        if IN_CI:
            pytest.fail(f"{why} (.ci/run installs it: CI must test Redis)")
        pytest.skip(why)


@pytest.fixture
def redis_servers(tmp_path: pathlib.Path) -> Iterator[LocalRedisServers]:
    need_redis()
    servers = LocalRedisServers(2, tmp_path / "redis")
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


Opener = Callable[..., GcsStorage]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def opener(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Opener]:
    """Opens the backend's shards (again and again: the same storage each time, but for memory)."""
    spec: StorageSpec
    if request.param == "memory":
        spec = StorageSpec("memory")
    elif request.param == "sqlite":
        spec = StorageSpec("sqlite", path=str(tmp_path / "gcs.db"))
    else:
        servers = request.getfixturevalue("redis_servers")
        spec = StorageSpec("redis", servers=tuple(servers.addresses))
    opened: list[GcsStorage] = []

    def open_(num_shards: int = 2, **kw: object) -> GcsStorage:
        storage = open_spec(spec, num_shards, **kw)  # type: ignore[arg-type]
        opened.append(storage)
        return storage

    yield open_
    for storage in opened:
        storage.close()


def test_each_backend_keeps_rows_as_the_protocol_says(opener: Opener) -> None:
    storage = opener()
    a, b = storage.storages
    assert isinstance(a, Storage) and isinstance(b, Storage)
    for table in TABLES:
        assert a.get(table, b"k") is None
        a.put(table, b"k", b"v1")
        a.put(table, b"k", table.encode())  # replaced
        a.put(table, b"gone", b"x")
        a.delete(table, b"gone")
        a.delete(table, b"never there")  # not an error
    for table in TABLES:
        assert a.get(table, b"k") == table.encode() and a.get(table, b"gone") is None
        assert a.items(table) == [(b"k", table.encode())]
        assert b.get(table, b"k") is None and list(b.items(table)) == []  # shards are apart
    rows = a.items("kv")
    a.put("kv", b"k2", b"v2")  # the rows read before are a snapshot
    assert rows == [(b"k", b"kv")]
    for key, _ in list(a.items("kv")):
        a.delete("kv", key)  # deleting while walking a snapshot is fine
    assert list(a.items("kv")) == []


def test_a_closed_storage_says_so(opener: Opener) -> None:
    storage = opener()
    storage.close()
    with pytest.raises(ClientClosedError, match="closed"):
        storage.storages[0].get("kv", b"k")
    with pytest.raises(ClientClosedError, match="closed"):
        storage.storages[1].put("kv", b"k", b"v")


@pytest.mark.parametrize("opener", ["sqlite", "redis"], indirect=True)
def test_persistent_backends_keep_every_row_and_the_cluster_id_across_close_and_reopen(
        opener: Opener) -> None:
    first = opener(num_shards=3)
    assert first.created and len(first.cluster_id) == 32
    for shard, storage in enumerate(first.storages):
        for table in TABLES:
            for i in range(20):
                storage.put(table, b"%d" % i, b"%s-%d-%d" % (table.encode(), shard, i))
            storage.delete(table, b"7")
    written = [{t: s.items(t) for t in TABLES} for s in first.storages]
    first.close()
    again = opener(num_shards=3)
    assert not again.created and again.cluster_id == first.cluster_id
    assert [{t: sorted(s.items(t)) for t in TABLES} for s in again.storages] == [
        {t: sorted(rows) for t, rows in shard.items()} for shard in written]
    assert again.storages[0].get("kv", b"7") is None


def test_memory_is_a_new_cluster_every_time() -> None:
    first, second = open_spec(StorageSpec("memory"), 2), open_spec(StorageSpec("memory"), 2)
    assert first.created and second.created and first.cluster_id != second.cluster_id
    first.close()
    second.close()


def test_storage_written_with_another_number_of_shards_is_refused(tmp_path: pathlib.Path) -> None:
    spec = StorageSpec("sqlite", path=str(tmp_path / "gcs.db"))
    open_spec(spec, 2).close()
    with pytest.raises(ConfigError, match=r"written by a GCS with 2 shards.*--num-shards 2"):
        open_spec(spec, 4)
    open_spec(spec, 2).close()  # the refused open left the file as it was, and unlocked


def test_gcs_state_on_sqlite_resumes_its_tables_and_counters(tmp_path: pathlib.Path) -> None:
    spec = StorageSpec("sqlite", path=str(tmp_path / "gcs.db"))
    storage = open_spec(spec, 4)
    state = GcsState(num_shards=4, storage_factory=storage.factory())
    jobs = [state.register_job(gcs_pb2.JobRow(driver_pid=p)) for p in (1, 2)]
    assert jobs == [b"\x01\0\0\0", b"\x02\0\0\0"]
    state.claim_actor_name("ns", "a", b"actor-1")
    state.close()
    storage.close()
    storage = open_spec(spec, 4)
    state = GcsState(num_shards=4, storage_factory=storage.factory())
    try:
        assert state.register_job(gcs_pb2.JobRow(driver_pid=3)) == b"\x03\0\0\0"
        assert state.lookup_actor_name("ns", "a") == b"actor-1"
        assert all(t != META_TABLE for t in TABLES)  # the cluster id is not in a table clients see
    finally:
        state.close()
        storage.close()


# ---- the write-behind store, driven through a fake sink ----


class FakeSink:
    """A sink that records batches and can be made unreachable (``down``) or to refuse writes."""

    description = "fake://"

    def __init__(self, rows: list[tuple[int, str, bytes, bytes]] | None = None) -> None:
        self.rows = rows or []
        self.batches: list[dict[tuple[int, str, bytes], bytes | None]] = []
        self.attempts = 0
        self.down = False
        self.refuse: StorageError | None = None
        self.reset_once: tuple[int, ...] = ()
        self.lock = threading.Lock()

    def load(self) -> list[tuple[int, str, bytes, bytes]]:
        return list(self.rows)

    def write(self, batch: Batch) -> None:
        with self.lock:
            self.attempts += 1
            if self.down:
                raise StorageUnavailableError("fake: connection refused", kind="ConnectionError")
            if self.refuse is not None:
                raise self.refuse
            if self.reset_once:
                shards, self.reset_once = self.reset_once, ()
                raise StorageResetError("fake: came back empty", shards=shards)
            self.batches.append(dict(batch))

    def check(self) -> None:
        if self.down:
            raise StorageUnavailableError("fake: connection refused", kind="ConnectionError")

    def close(self) -> None:
        pass

    def saved(self) -> dict[tuple[int, str, bytes], bytes | None]:
        out: dict[tuple[int, str, bytes], bytes | None] = {}
        for batch in self.batches:
            out.update(batch)
        return out


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


def buffered(sink: FakeSink, **kw: float) -> BufferedStore:
    options: dict[str, float] = {"flush_s": 3600.0, "timeout_s": 30.0, **kw}
    return BufferedStore(sink, 2, flush_s=options["flush_s"], timeout_s=options["timeout_s"],
                         batch_rows=int(options.get("batch_rows", 5000)))


def test_writes_are_read_back_at_once_and_saved_coalesced_in_one_batch(sink: FakeSink) -> None:
    store = buffered(sink)  # a window of an hour: nothing is saved until flush()
    try:
        shard = store.shard(1)
        for i in range(100):
            shard.put("kv", b"k", b"%d" % i)
        shard.put("kv", b"gone", b"x")
        shard.delete("kv", b"gone")
        assert shard.get("kv", b"k") == b"99" and shard.items("kv") == [(b"k", b"99")]
        assert sink.batches == []
        store.flush()
        assert sink.batches == [{(1, "kv", b"k"): b"99", (1, "kv", b"gone"): None}]
        assert store.statistics()["pending"] == 0
    finally:
        store.close()


def test_a_full_batch_is_saved_before_its_window_ends(sink: FakeSink) -> None:
    store = buffered(sink, batch_rows=3)
    try:
        for i in range(3):
            store.shard(0).put("kv", b"%d" % i, b"v")
        wait_for(lambda: sink.batches, what="the batch of 3 rows to be saved")
        assert sink.batches[0] == {(0, "kv", b"%d" % i): b"v" for i in range(3)}
    finally:
        store.close()


def test_close_saves_what_is_queued(sink: FakeSink) -> None:
    store = buffered(sink)
    store.shard(0).put("jobs", b"j", b"row")
    store.shard(0).close()
    assert sink.batches == []  # one shard still open
    store.shard(1).close()
    assert sink.saved() == {(0, "jobs", b"j"): b"row"}


def test_an_outage_shorter_than_the_timeout_loses_nothing(sink: FakeSink,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    store = buffered(sink, flush_s=0.001)
    try:
        sink.down = True
        store.shard(0).put("kv", b"a", b"1")
        wait_for(lambda: sink.attempts >= 3, what="3 tries to save while the sink is down")
        store.shard(0).put("kv", b"b", b"2")  # still accepted: the outage may end
        sink.down = False
        store.flush(timeout=10)
        assert sink.saved() == {(0, "kv", b"a"): b"1", (0, "kv", b"b"): b"2"} and store.failure is None
        assert [r.levelname for r in caplog.records if "fake://" in r.getMessage()] == ["WARNING", "WARNING"]
    finally:
        store.close()


def test_an_outage_past_the_timeout_fails_the_store_once(sink: FakeSink,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    store = buffered(sink, flush_s=0.001, timeout_s=0.2)
    failures: list[StorageError] = []
    store.on_failure(failures.append)
    try:
        sink.down = True
        store.shard(0).put("kv", b"a", b"1")
        wait_for(lambda: failures, what="the store to give up on its sink")
        assert isinstance(failures[0], StorageUnavailableError)
        assert "unreachable for" in str(failures[0]) and "1 writes were not saved" in str(failures[0])
        with pytest.raises(StorageUnavailableError, match="unreachable"):
            store.shard(0).put("kv", b"b", b"2")
        late: list[StorageError] = []
        store.on_failure(late.append)  # registered after the failure: called at once
        assert late == failures
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and not errors[0].exc_info  # one line, no traceback
    finally:
        store.close()


def test_a_refused_write_is_logged_once_refuses_writes_and_recovers(
        sink: FakeSink, caplog: pytest.LogCaptureFixture) -> None:
    store = buffered(sink, flush_s=0.001)
    try:
        sink.refuse = StorageError("fake: disk full", kind="SQLITE_FULL")
        store.shard(0).put("kv", b"a", b"1")
        with pytest.raises(StorageError, match="disk full"):
            store.flush()
        wait_for(lambda: sink.attempts >= 4, what="the store to retry the refused batch")
        with pytest.raises(StorageError, match="disk full"):
            store.shard(0).put("kv", b"b", b"2")
        assert store.shard(0).get("kv", b"a") == b"1"  # reads go on
        assert len([r for r in caplog.records if "refused a write" in r.getMessage()]) == 1
        sink.refuse = None
        wait_for(lambda: sink.batches, what="the retry to succeed once the sink accepts writes")
        store.shard(0).put("kv", b"b", b"2")
        store.flush()
        assert sink.saved() == {(0, "kv", b"a"): b"1", (0, "kv", b"b"): b"2"}
    finally:
        store.close()


def test_a_sink_back_without_its_rows_gets_them_again_from_memory() -> None:
    sink = FakeSink(rows=[(1, "actors", b"old", b"row"), (0, "kv", b"other", b"x")])
    store = buffered(sink)
    try:
        sink.reset_once = (1,)
        store.shard(1).put("kv", b"new", b"v")
        store.flush()
        assert sink.saved() == {(1, "actors", b"old"): b"row", (1, "kv", b"new"): b"v"}
    finally:
        store.close()


def test_rows_of_a_shard_beyond_the_count_are_refused() -> None:
    with pytest.raises(StorageError, match="rows of shard 5, but this GCS runs 2 shards"):
        BufferedStore(FakeSink(rows=[(5, "kv", b"k", b"v")]), 2)


# ---- SQLite ----


def test_sqlite_reads_see_writes_before_the_file_does(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "gcs.db"
    store = BufferedStore(SqliteSink(path), 2, flush_s=3600.0)
    try:
        store.shard(0).put("kv", b"k", b"v")
        assert store.shard(0).get("kv", b"k") == b"v"
        with sqlite3.connect(path) as other:
            assert other.execute("SELECT count(*) FROM rows").fetchone() == (0,)
            store.flush()
            rows = other.execute("SELECT shard, tbl, key, value FROM rows").fetchall()
            assert rows == [(0, "kv", b"k", b"v")]
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        store.close()


def test_sqlite_disk_full_surfaces_as_a_storage_error_and_recovers(tmp_path: pathlib.Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    sink = SqliteSink(tmp_path / "gcs.db")
    pages = sink._conn.execute("PRAGMA page_count").fetchone()[0]  # the test's way to fill the disk
    sink._conn.execute(f"PRAGMA max_page_count = {pages}")
    store = BufferedStore(sink, 1, flush_s=0.001)
    try:
        store.shard(0).put("objects", b"big", b"x" * 100_000)
        with pytest.raises(StorageError, match=r"SQLITE_FULL.*free disk space") as err:
            store.flush()
        assert err.value.kind == "SQLITE_FULL"
        with pytest.raises(StorageError, match="SQLITE_FULL"):
            store.shard(0).put("kv", b"k", b"v")
        assert len([r for r in caplog.records if "refused a write" in r.getMessage()]) == 1
        sink._conn.execute("PRAGMA max_page_count = 1000000")
        wait_for(lambda: store.statistics()["pending"] == 0,
                 what="the batch that did not fit to be saved once there is room")
        store.shard(0).put("kv", b"k", b"v")
        store.flush()
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "gcs.db") as check:
        assert {k for (k,) in check.execute("SELECT key FROM rows")} == {b"big", b"k"}


def test_a_second_gcs_on_a_database_in_use_is_refused(tmp_path: pathlib.Path) -> None:
    first = SqliteSink(tmp_path / "gcs.db")
    try:
        with pytest.raises(StorageError, match=rf"in use by another GCS \(pid {os.getpid()}"):
            SqliteSink(tmp_path / "gcs.db", lock_timeout_s=0.05)
    finally:
        first.close()
    SqliteSink(tmp_path / "gcs.db", lock_timeout_s=0.05).close()  # free once the first closed


# ---- Redis ----


def test_redis_keeps_each_shard_on_server_shard_mod_n(redis_servers: LocalRedisServers) -> None:
    storage = open_spec(StorageSpec("redis", servers=tuple(redis_servers.addresses)), 4)
    try:
        for shard, s in enumerate(storage.storages):
            s.put("kv", b"k", b"%d" % shard)
        storage.flush()
    finally:
        storage.close()
    for i, (host, port) in enumerate(redis_servers.addresses):
        with redis.Redis(host=host, port=port) as client:
            assert {s: client.hget(f"cellray:gcs:{s}:kv", b"k") for s in range(4) if s % 2 == i} == {
                s: b"%d" % s for s in range(4) if s % 2 == i}
            assert all(client.hget(f"cellray:gcs:{s}:kv", b"k") is None for s in range(4) if s % 2 != i)


def test_a_redis_server_that_lost_its_data_gets_every_row_again(redis_servers: LocalRedisServers) -> None:
    storage = open_spec(StorageSpec("redis", servers=tuple(redis_servers.addresses)), 2, flush_s=0.001)
    try:
        storage.storages[0].put("actors", b"a", b"row")
        storage.flush()
        host, port = redis_servers.addresses[0]
        with redis.Redis(host=host, port=port) as admin:
            admin.flushall()  # as a server restarted without persistence would be ...
            admin.client_kill_filter(_type="normal", skipme=True)  # ... and the GCS's connection broken
            storage.storages[1].put("kv", b"k", b"v")  # shard 1: server 1, still fine
            storage.storages[0].put("kv", b"k", b"v")
            storage.flush(timeout=10)
            assert admin.hgetall("cellray:gcs:0:actors") == {b"a": b"row"}
            assert admin.hgetall("cellray:gcs:0:kv") == {b"k": b"v"}
    finally:
        storage.close()
    again = open_spec(StorageSpec("redis", servers=tuple(redis_servers.addresses)), 2)
    try:
        assert again.storages[0].get("actors", b"a") == b"row"
    finally:
        again.close()


# ---- the setting ----


@pytest.mark.parametrize(("text", "spec"), [
    ("memory", StorageSpec("memory")),
    ("sqlite", StorageSpec("sqlite")),
    ("sqlite:///var/lib/cellray/gcs.db", StorageSpec("sqlite", path="/var/lib/cellray/gcs.db")),
    ("redis://127.0.0.1:6379,10.0.0.2:6380", StorageSpec("redis", servers=(("127.0.0.1", 6379),
                                                                           ("10.0.0.2", 6380)))),
])
def test_accepted_storage_urls(text: str, spec: StorageSpec) -> None:
    assert parse_storage(text) == spec
    assert config.Settings(gcs_storage=text).gcs_storage == text


@pytest.mark.parametrize(("text", "why"), [
    ("postgres://db", "unknown backend 'postgres'"),
    ("sqlite://gcs.db", "is not absolute"),
    ("sqlite:///var/lib/", "names a directory"),
    ("redis://127.0.0.1", "is not HOST:PORT"),
    ("redis://127.0.0.1:0", "not in 1..65535"),
    ("redis://h:1,h:1", "named twice"),
])
def test_a_bad_storage_url_says_what_is_wrong_and_what_is_accepted(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=rf"gcs_storage .*{why}") as err:
        config.Settings(gcs_storage=text)
    assert "memory, sqlite, sqlite:///ABSOLUTE/PATH.db or redis://HOST:PORT" in str(err.value)
    with pytest.raises(ConfigError, match=why):
        parse_storage(text)


def test_redis_shards_takes_the_place_of_the_default_only() -> None:
    assert config.Settings(redis_shards=2).redis_shards == 2
    with pytest.raises(ConfigError, match=r"redis_shards .* must be left at its default"):
        config.Settings(redis_shards=2, gcs_storage="memory")
