"""The real head process (`python -m runtime.gcs`) on durable storage: kill -9 it, start it
again on the same port and storage, and every table reads back as it was, under the same
cluster id; on `memory` it comes back as a new cluster. Redis restarted on its port: the
GCS's writes resume; Redis gone for good: the GCS exits with one error line and code 3.

Before each kill -9 the test waits (``wait_for``, on the storage itself) until the rows it
wrote are saved: a GCS killed loses the writes of its last batch window by design.
Without redis-server the Redis cases skip and say why; in CI (``CI=true``) they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest
import redis

from runtime._session import read_token, write_token
from runtime.cluster.process import ProcessHandle
from runtime.gcs.__main__ import EXIT_STORAGE_LOST
from runtime.gcs.client import GcsClient
from runtime.gcs.redis_servers import LocalRedisServers, redis_server_path
from runtime.gcs.state import TABLES, shard_of
from runtime.protocol import common_pb2, gcs_pb2
from runtime.protocol.states import ActorState, PlacementStrategy, TaskState
from runtime.testing.wait import async_wait_for, wait_for

pytestmark = pytest.mark.timeout(120)

REPO = pathlib.Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() == "true"
Rows = set[tuple[str, bytes, bytes]]


def need_redis() -> None:
    if redis_server_path() is None:
        why = ("redis-server is not installed, so the GCS on Redis is not tested here; install it with "
               "`apt-get install -y redis-server`")
        if IN_CI:
            pytest.fail(f"{why} (.ci/run installs it: CI must test Redis)")
        pytest.skip(why)


@pytest.fixture
def redis_servers(tmp_path: pathlib.Path) -> Iterator[LocalRedisServers]:
    """Two Redis servers that the test (not the GCS) owns."""
    need_redis()
    servers = LocalRedisServers(2, tmp_path / "redis")
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


def start_head(session: pathlib.Path, *extra: str, port: int = 0, **env: str) -> ProcessHandle:
    session.mkdir(parents=True, exist_ok=True)
    if not (session / "token").exists():
        write_token(session)
    (session / "gcs.ready").unlink(missing_ok=True)
    args = ["--host", "127.0.0.1", "--port", str(port), "--session-dir", str(session),
            "--token-file", str(session / "token"), "--num-shards", "4", "--parent-pid", str(os.getpid()),
            "--node-timeout-ms", "600000", *extra]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    full_env = dict(os.environ, PYTHONPATH=path, **env)
    return ProcessHandle("gcs", "runtime.gcs", args, session / "logs" / "gcs.log", session / "gcs.ready",
                         env=full_env)


def kill9(head: ProcessHandle) -> None:
    os.kill(head.pid, signal.SIGKILL)
    head.popen.wait()


NODE = b"n" * 16


async def write_everything(address: str, token: str) -> None:
    """A row in every table, through the client as nodes and drivers write them."""
    async with GcsClient(address, token) as gcs:
        await gcs.register_node(gcs_pb2.NodeRow(node_id=NODE, address="127.0.0.1:1", hostname="h"))
        job = await gcs.register_job(gcs_pb2.JobRow(driver_pid=4242, entrypoint="script.py"))
        await gcs.export_function(gcs_pb2.FunctionRow(function_id=b"f" * 20, name="f", pickled=b"code",
                                                      job_id=job))
        await gcs.put_actor(gcs_pb2.ActorRow(actor_id=b"a" * 16, class_name="Counter", name="counter",
                                             namespace="ns", state=ActorState.ALIVE, node_id=NODE,
                                             detached=True, job_id=job))
        assert (await gcs.claim_actor_name("ns", "counter", b"a" * 16))[0]
        await gcs.put("kv", b"user-key", b"user-value")
        await gcs.report_events(
            [common_pb2.TaskEvent(task_id=b"t" * 16, state=TaskState.SPILLED, node_id=NODE, name="f")],
            [gcs_pb2.ObjectLocationUpdate(object_id=b"o" * 20, node_id=NODE, size=10)])
        group = await gcs.create_placement_group(gcs_pb2.PlacementGroupRow(
            placement_group_id=b"g" * 16, name="never", namespace="ns", strategy=PlacementStrategy.PACK,
            bundles=[common_pb2.Bundle(resources={"GPU": 1000.0})], detached=True))

        async def infeasible() -> bool:  # the row settles once the GCS has tried to place it
            row = await gcs.get_placement_group(group)
            return row is not None and row.infeasible

        await async_wait_for(infeasible, what="the GCS to find the placement group infeasible")


async def read_everything(address: str, token: str) -> tuple[str, dict[str, list[tuple[bytes, bytes]]]]:
    async with GcsClient(address, token) as gcs:
        ping = await gcs.ping()
        return ping.cluster_id, {t: sorted(await gcs.list_table(t)) for t in TABLES}


def served_rows(tables: dict[str, list[tuple[bytes, bytes]]]) -> Rows:
    return {(t, k, v) for t, rows in tables.items() for k, v in rows}


def sqlite_rows(session: pathlib.Path) -> Rows:
    with sqlite3.connect(f"file:{session / 'gcs.db'}?mode=ro", uri=True) as db:
        return {(t, bytes(k), bytes(v)) for t, k, v in db.execute("SELECT tbl, key, value FROM rows")}


def redis_rows(addresses: list[tuple[str, int]]) -> Rows:
    rows: Rows = set()
    for host, port in addresses:
        with redis.Redis(host=host, port=port) as client:
            for name in client.scan_iter(match="cellray:gcs:*", _type="HASH"):
                table = name.decode().split(":", 3)[3]
                rows |= {(table, k, v) for k, v in client.hgetall(name).items()}
    return rows


def owned_redis(session: pathlib.Path) -> list[tuple[str, int]]:
    servers = json.loads((session / "redis" / "servers.json").read_text())["servers"]
    return [("127.0.0.1", s["port"]) for s in servers]


def assert_one_shard_per_server(addresses: list[tuple[str, int]]) -> None:
    """Each Redis server holds the rows of one GCS shard, its own (as in the paper)."""
    for index, (host, port) in enumerate(addresses):
        with redis.Redis(host=host, port=port) as client:
            shards = {name.decode().split(":")[2] for name in client.scan_iter(match="cellray:gcs:*", _type="HASH")}
        assert shards == {str(index)}, (index, shards)


def kill_and_restart_keeps_everything(session: pathlib.Path, *extra: str) -> None:
    head = start_head(session, *extra)
    again = None
    try:
        info = head.wait_ready(timeout=60)
        token = read_token(session / "token")
        asyncio.run(write_everything(info["address"], token))
        cluster_id, before = asyncio.run(read_everything(info["address"], token))
        assert cluster_id == info["cluster_id"] and all(before.values()), before
        saved = (lambda: sqlite_rows(session)) if "--redis-shards" not in extra else (
            lambda: redis_rows(owned_redis(session)))
        wait_for(lambda: served_rows(before) <= saved(), what="every row to be saved before the kill -9")
        if "--redis-shards" in extra:
            assert_one_shard_per_server(owned_redis(session))
        kill9(head)
        again = start_head(session, *extra, port=info["port"])
        info2 = again.wait_ready(timeout=60)
        assert info2["address"] == info["address"]
        cluster_id2, after = asyncio.run(read_everything(info2["address"], token))
        assert (cluster_id2, after) == (cluster_id, before)
    finally:
        head.stop(grace=10)
        if again is not None:
            assert again.stop(grace=10) == 0, (session / "logs" / "gcs.log").read_text()
    assert "restored from its storage" in (session / "logs" / "gcs.log").read_text()


def test_sqlite_gcs_killed_comes_back_with_every_table_and_its_cluster_id(tmp_path: pathlib.Path) -> None:
    session = tmp_path / "session"
    kill_and_restart_keeps_everything(session)  # sqlite is the default
    assert (session / "gcs.db").exists()


def test_redis_gcs_killed_comes_back_with_every_table_and_its_cluster_id(tmp_path: pathlib.Path) -> None:
    need_redis()
    kill_and_restart_keeps_everything(tmp_path / "session", "--redis-shards", "2")


def test_memory_gcs_restarted_is_a_new_cluster(tmp_path: pathlib.Path) -> None:
    session = tmp_path / "session"
    head = start_head(session, "--gcs-storage", "memory")
    again = None
    try:
        info = head.wait_ready(timeout=60)
        token = read_token(session / "token")
        asyncio.run(write_everything(info["address"], token))
        kill9(head)
        again = start_head(session, "--gcs-storage", "memory", port=info["port"])
        info2 = again.wait_ready(timeout=60)
        cluster_id, tables = asyncio.run(read_everything(info2["address"], token))
        assert cluster_id == info2["cluster_id"] != info["cluster_id"] and info2["storage"] == "memory"
        assert not any(tables.values())
    finally:
        head.stop(grace=10)
        if again is not None:
            again.stop(grace=10)


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie not yet reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kv_key_on_server(server: int, servers: int) -> bytes:
    """A kv key whose shard lives on Redis server ``server`` (of ``servers``: one shard each)."""
    keys = (b"key-%d" % i for i in range(1000))
    return next(k for k in keys if shard_of(k, servers) == server)


def test_writes_resume_when_redis_restarts_on_its_port(tmp_path: pathlib.Path,
                                                       redis_servers: LocalRedisServers) -> None:
    session = tmp_path / "session"
    url = "redis://" + ",".join(f"{h}:{p}" for h, p in redis_servers.addresses)
    head = start_head(session, "--gcs-storage", url)
    key = kv_key_on_server(0, 2)
    try:
        info = head.wait_ready(timeout=60)
        token = read_token(session / "token")

        async def put(value: bytes) -> None:
            async with GcsClient(info["address"], token) as gcs:
                await gcs.put("kv", key, value)

        asyncio.run(put(b"before"))
        wait_for(lambda: ("kv", key, b"before") in redis_rows(redis_servers.addresses[:1]),
                 what="the first write on Redis server 0")
        os.kill(redis_servers.pids[0], signal.SIGTERM)
        wait_for(lambda: gone(redis_servers.pids[0]), what="Redis server 0 to exit")
        asyncio.run(put(b"during"))  # taken by the GCS, kept in memory while the server is down
        wait_for(lambda: redis_servers.revive(0), what="Redis server 0 to start again on its port")
        wait_for(lambda: ("kv", key, b"during") in redis_rows(redis_servers.addresses[:1]), timeout=30,
                 what="the write made while Redis server 0 was down to reach it once it is back")
        asyncio.run(put(b"after"))
        wait_for(lambda: ("kv", key, b"after") in redis_rows(redis_servers.addresses[:1]),
                 what="a write after the restart to reach Redis server 0")
        assert head.alive()
    finally:
        assert head.stop(grace=10) == 0, (session / "logs" / "gcs.log").read_text()
    log = (session / "logs" / "gcs.log").read_text()
    assert "is unreachable" in log and "is reachable again" in log and " ERROR " not in log


def test_a_redis_server_the_gcs_owns_is_started_again_when_it_dies(tmp_path: pathlib.Path) -> None:
    need_redis()
    session = tmp_path / "session"
    head = start_head(session, "--redis-shards", "2")
    key = kv_key_on_server(0, 2)
    try:
        info = head.wait_ready(timeout=60)
        token = read_token(session / "token")
        servers = json.loads((session / "redis" / "servers.json").read_text())["servers"]
        os.kill(servers[0]["pid"], signal.SIGKILL)
        wait_for(lambda: gone(servers[0]["pid"]), what="the GCS's Redis server 0 to die")

        async def put() -> None:
            async with GcsClient(info["address"], token) as gcs:
                await gcs.put("kv", key, b"written after the server died")

        asyncio.run(put())
        row = ("kv", key, b"written after the server died")
        wait_for(lambda: row in redis_rows(owned_redis(session)[:1]), timeout=30,
                 what="the GCS to start its Redis server 0 again on its port and save the write")
        assert owned_redis(session)[0][1] == servers[0]["port"]
    finally:
        assert head.stop(grace=10) == 0, (session / "logs" / "gcs.log").read_text()
    assert "starting it again" in (session / "logs" / "gcs.log").read_text()


def test_gcs_exits_with_one_error_line_when_redis_is_gone_for_good(tmp_path: pathlib.Path,
                                                                 redis_servers: LocalRedisServers) -> None:
    session = tmp_path / "session"
    url = "redis://" + ",".join(f"{h}:{p}" for h, p in redis_servers.addresses)
    head = start_head(session, "--gcs-storage", url, CELLRAY_GCS_STORAGE_TIMEOUT_S="1")
    try:
        head.wait_ready(timeout=60)
        redis_servers.stop()
        assert head.popen.wait(timeout=60) == EXIT_STORAGE_LOST
    finally:
        head.stop(grace=10)
    log = (session / "logs" / "gcs.log").read_text()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "unreachable for" in errors[0] and "gcs_storage_timeout_s=1" in errors[0], log
    assert "Traceback" not in log


def test_a_storage_of_another_shard_count_or_a_bad_url_stops_the_gcs_with_a_clear_message(
        tmp_path: pathlib.Path) -> None:
    session = tmp_path / "session"
    head = start_head(session)
    try:
        head.wait_ready(timeout=60)
    finally:
        assert head.stop(grace=10) == 0
    other = start_head(session, "--num-shards", "2")
    assert other.popen.wait(timeout=60) == 1
    assert "written by a GCS with 4 shards" in (session / "logs" / "gcs.log").read_text()
    proc = subprocess.run([sys.executable, "-m", "runtime.gcs", "--session-dir", "x", "--token-file", "t",
                           "--ready-file", "r", "--gcs-storage", "postgres://db"], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--gcs-storage: must be memory, sqlite" in proc.stderr
    assert "unknown backend 'postgres'" in proc.stderr
