"""The GCS services over real gRPC on 127.0.0.1, server and client in the test's own loop.

Every test synchronises on messages or replies it receives, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest

from runtime.exceptions import (
    ClientClosedError,
    ConnectionLostError,
    InvalidRequestError,
    NodeDiedError,
    NotFoundError,
    UnauthenticatedError,
)
from runtime.gcs import keys
from runtime.gcs.client import GcsClient
from runtime.gcs.service import GcsService
from runtime.gcs.state import GcsState
from runtime.protocol import common_pb2, gcs_pb2, gcs_pb2_grpc
from runtime.rpc.channel import connect, token_metadata
from runtime.rpc.errors import FENCED_NODE
from runtime.rpc.server import create_server
from runtime.testing import async_wait_for

pytestmark = pytest.mark.timeout(60)

TOKEN = "a" * 64
_T = TypeVar("_T")


def run(coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
    """Run one test coroutine on a fresh event loop, bounded by its own deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Head:
    service: GcsService
    state: GcsState
    address: str
    client: GcsClient


@contextlib.asynccontextmanager
async def started_gcs(clock: Callable[[], float] = time.time, **service_kw: Any) -> AsyncIterator[Head]:
    state = GcsState(num_shards=4, clock=clock)
    service = GcsService(state, session_dir="/tmp/cellray-test", **service_kw)
    server, port = await create_server("127.0.0.1", 0, TOKEN, service.adders())
    service.start()
    client = GcsClient(f"127.0.0.1:{port}", TOKEN)
    try:
        yield Head(service, state, f"127.0.0.1:{port}", client)
    finally:
        await client.close()
        await service.close()
        await server.stop(None)


async def read_snapshot(sub: AsyncIterator[gcs_pb2.PubMessage]) -> list[gcs_pb2.PubMessage]:
    rows: list[gcs_pb2.PubMessage] = []
    async for msg in sub:
        if msg.snapshot_done:
            return rows
        assert msg.snapshot, msg
        rows.append(msg)
    raise AssertionError("the stream ended before snapshot_done")


def node(i: int) -> gcs_pb2.NodeRow:
    return gcs_pb2.NodeRow(node_id=i.to_bytes(16, "big"), address=f"127.0.0.1:{7000 + i}")


def test_register_heartbeat_unregister() -> None:
    async def body() -> None:
        async with started_gcs() as head:
            gcs = head.client
            assert await gcs.register_node(node(1)) == 4
            assert await gcs.heartbeat(node(1).node_id, common_pb2.NodeLoad(queue_length=2))
            assert not await gcs.heartbeat(node(2).node_id, common_pb2.NodeLoad())
            row = gcs_pb2.NodeRow.FromString(await gcs.get_entry("nodes", node(1).node_id) or b"")
            assert row.alive and row.load.queue_length == 2
            await gcs.unregister_node(node(1).node_id, "drained")
            with pytest.raises(NodeDiedError, match=r"\(drained\): it must rejoin under a new id"):
                await gcs.heartbeat(node(1).node_id, common_pb2.NodeLoad())
            rows = await gcs.list_table("nodes")
            assert [gcs_pb2.NodeRow.FromString(v).death_cause for _, v in rows] == ["drained"]
            ping = await gcs.ping()
            assert (ping.num_shards, ping.session_dir) == (4, "/tmp/cellray-test")
    run(body())


def test_jobs_functions_and_put() -> None:
    async def body() -> None:
        async with started_gcs() as head:
            gcs = head.client
            job = await gcs.register_job(gcs_pb2.JobRow(driver_pid=1))
            assert job == b"\x01\x00\x00\x00"
            await gcs.finish_job(job)
            with pytest.raises(NotFoundError, match="not registered") as lookup:
                await gcs.finish_job(b"\x07\x00\x00\x00")
            assert isinstance(lookup.value, LookupError)
            fn = gcs_pb2.FunctionRow(function_id=b"h" * 20, name="f", pickled=b"p", job_id=job)
            assert await gcs.export_function(fn) is False
            assert await gcs.export_function(fn) is True
            other = GcsClient(head.address, TOKEN)
            try:
                got = await other.get_function(b"h" * 20)
                assert got is not None and got.pickled == b"p"
                assert await other.get_function(b"h" * 20) is got  # served from the cache
                assert await other.get_function(b"x" * 20) is None
            finally:
                await other.close()
            assert await gcs.put("kv", b"k", b"1", only_if_absent=True) == (True, b"")
            assert await gcs.put("kv", b"k", b"2", only_if_absent=True) == (False, b"1")
            assert await gcs.list_table("kv", limit=1) == [(b"k", b"1")]
    run(body())


def test_typed_calls_for_actors_actor_names_and_scheduler_replicas() -> None:
    async def body() -> None:
        async with started_gcs() as head:
            gcs = head.client
            actor = gcs_pb2.ActorRow(actor_id=b"a" * 16, class_name="Counter", state="ALIVE")
            assert await gcs.get_actor(actor.actor_id) is None
            await gcs.put_actor(actor)
            assert await gcs.get_actor(actor.actor_id) == actor
            # names: claimed once per namespace, looked up, released, claimed again
            assert await gcs.lookup_actor_name("ns", "counter") is None
            assert await gcs.claim_actor_name("ns", "counter", b"first") == (True, b"")
            assert await gcs.claim_actor_name("ns", "counter", b"second") == (False, b"first")
            assert await gcs.claim_actor_name("other", "counter", b"third") == (True, b"")
            assert await gcs.lookup_actor_name("ns", "counter") == b"first"
            # the wire key is the one node managers of this version write and delete
            assert await gcs.get_entry("kv", b"actor_name:ns:counter") == b"first"
            await gcs.release_actor_name("ns", "counter")
            await gcs.release_actor_name("ns", "counter")  # releasing a free name is fine
            assert await gcs.lookup_actor_name("ns", "counter") is None
            assert await gcs.lookup_actor_name("other", "counter") == b"third"
            assert await gcs.claim_actor_name("ns", "counter", b"again") == (True, b"")
            with pytest.raises(InvalidRequestError, match="name value is empty"):
                await gcs.claim_actor_name("ns", "x", b"")
            with pytest.raises(InvalidRequestError, match="namespace is empty"):
                await gcs.lookup_actor_name("", "x")
            # scheduler replicas
            assert await gcs.list_schedulers() == []
            await gcs.register_scheduler("gs-1", "127.0.0.1:9001")
            await gcs.register_scheduler("gs-0", "127.0.0.1:9000")
            assert await gcs.list_schedulers() == ["127.0.0.1:9000", "127.0.0.1:9001"]
            assert await gcs.get_entry("kv", keys.scheduler_key("gs-0")) == b"127.0.0.1:9000"
            await gcs.deregister_scheduler("gs-0")
            await gcs.deregister_scheduler("gs-7")  # unknown: nothing happens
            assert await gcs.list_schedulers() == ["127.0.0.1:9001"]
            with pytest.raises(InvalidRequestError, match="scheduler address is empty"):
                await gcs.register_scheduler("gs-2", "")
    run(body())


def test_function_cache_is_bounded_and_a_closed_client_says_so() -> None:
    async def body() -> None:
        async with started_gcs() as head:
            for i in range(3):
                await head.client.export_function(gcs_pb2.FunctionRow(function_id=bytes([i]) * 20))
            small = GcsClient(head.address, TOKEN, timeout=5.0, function_cache_size=2)
            first = await small.get_function(b"\x00" * 20)
            assert first is not None and await small.get_function(b"\x00" * 20) is first
            await small.get_function(b"\x01" * 20)
            await small.get_function(b"\x02" * 20)  # evicts the oldest
            again = await small.get_function(b"\x00" * 20)
            assert again == first and again is not first
            await small.close()
            with pytest.raises(ClientClosedError, match="was closed"):
                await small.ping()
            with pytest.raises(ValueError, match="function_cache_size"):
                GcsClient(head.address, TOKEN, function_cache_size=0)
    run(body())


def test_subscribe_gets_a_snapshot_then_every_change_in_order() -> None:
    async def body() -> None:
        async with started_gcs() as head:
            gcs = head.client
            for i in range(50):
                await gcs.put("kv", b"old%d" % i, b"v0")
            sub = gcs.subscribe(["kv", "objects"])
            first = await sub.__anext__()
            # The server took its snapshot before sending `first`: all of this comes after.
            await gcs.put("kv", b"old0", b"v1")
            await gcs.register_job(gcs_pb2.JobRow())  # "jobs" is not subscribed
            oid, nid = b"o" * 20, node(1).node_id
            await gcs.report_events([], [gcs_pb2.ObjectLocationUpdate(object_id=oid, node_id=nid, size=8)])
            await gcs.report_events([], [gcs_pb2.ObjectLocationUpdate(object_id=oid, node_id=nid,
                                                                       removed=True)])
            for i in range(20):
                await gcs.put("kv", b"new%d" % i, b"v")
            snapshot = [first, *await read_snapshot(sub)]
            expected = sorted((b"old%d" % i, b"v0") for i in range(50))
            assert sorted((m.key, m.value) for m in snapshot) == expected
            changes = [await sub.__anext__() for _ in range(23)]
            assert [(m.table, m.key, m.deleted) for m in changes[:3]] == [
                ("kv", b"old0", False), ("objects", oid, False), ("objects", oid, True)]
            assert changes[0].value == b"v1" and not any(m.snapshot for m in changes)
            assert [m.key for m in changes[3:]] == [b"new%d" % i for i in range(20)]
            assert len(head.service.publisher) == 1
            await sub.aclose()
            await async_wait_for(lambda: len(head.service.publisher) == 0,
                                 what="the server to drop the subscriber")
    run(body())


def test_dead_node_is_published_when_its_heartbeats_stop() -> None:
    async def body() -> None:
        clock = FakeClock()
        async with started_gcs(clock, heartbeat_ms=5, node_timeout_ms=1000) as head:
            gcs = head.client
            sub = gcs.subscribe(["nodes"])
            assert await read_snapshot(sub) == []
            await gcs.register_node(node(1))
            joined = gcs_pb2.NodeRow.FromString((await sub.__anext__()).value)
            assert joined.alive
            clock.now += 5.0
            died = gcs_pb2.NodeRow.FromString((await sub.__anext__()).value)
            assert not died.alive and died.death_cause.startswith("no heartbeat for 5.0 s")
            with pytest.raises(NodeDiedError):
                await gcs.heartbeat(node(1).node_id, common_pb2.NodeLoad())
            await sub.aclose()
    run(body())


def test_a_node_declared_dead_is_refused_under_its_id_with_failed_precondition() -> None:
    """Issue 12: a node paused past the timeout woke up, re-registered under its old id and
    got new work. Its heartbeat and its registration are refused for good; a new id joins."""
    async def body() -> None:
        clock = FakeClock()
        async with started_gcs(clock, heartbeat_ms=5, node_timeout_ms=1000) as head:
            gcs = head.client
            sub = gcs.subscribe(["nodes"])
            assert await read_snapshot(sub) == []
            await gcs.register_node(node(1))
            assert gcs_pb2.NodeRow.FromString((await sub.__anext__()).value).alive
            clock.now += 5.0
            died = gcs_pb2.NodeRow.FromString((await sub.__anext__()).value)
            assert not died.alive and died.death_time == 1005.0
            with pytest.raises(NodeDiedError, match=(
                    rf"the GCS at {head.address} refused this node: Heartbeat: node 000000000000 "
                    r"\(127.0.0.1:7001\) was declared dead at .*\(no heartbeat for 5.0 s .*\): "
                    r"it must rejoin under a new id")) as info:
                await gcs.heartbeat(node(1).node_id, common_pb2.NodeLoad())
            assert info.value.node_id == node(1).node_id.hex()
            with pytest.raises(NodeDiedError, match=r"RegisterNode: .* must rejoin under a new id"):
                await gcs.register_node(node(1))
            # The raw status, for clients in other languages: FAILED_PRECONDITION and a trailer.
            channel = connect(head.address)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as raw:
                    await gcs_pb2_grpc.NodeInfoStub(channel).Heartbeat(
                        gcs_pb2.HeartbeatRequest(node_id=node(1).node_id), metadata=token_metadata(TOKEN))
            finally:
                await channel.close()
            assert raw.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert (FENCED_NODE, node(1).node_id.hex()) in list(raw.value.trailing_metadata() or ())
            # Refusing wrote nothing: the row stays DEAD, and no change was published.
            row = gcs_pb2.NodeRow.FromString(await gcs.get_entry("nodes", node(1).node_id) or b"")
            assert row == died
            await gcs.register_node(node(2))  # the same process, rejoining under a new id
            assert await gcs.heartbeat(node(2).node_id, common_pb2.NodeLoad())
            assert (await sub.__anext__()).key == node(2).node_id  # node 1's row never changed
            await sub.aclose()
    run(body())


def test_a_subscriber_that_falls_behind_is_disconnected_and_can_resubscribe() -> None:
    async def body() -> None:
        async with started_gcs(queue_size=4) as head:
            sub = head.client.subscribe(["kv"])
            assert await read_snapshot(sub) == []
            for i in range(10):  # one burst, no await: the stream cannot drain in between
                head.state.put("kv", b"k%d" % i, b"v")
            head.service.commit()
            assert len(head.service.publisher) == 0
            with pytest.raises(ConnectionLostError, match="fell 4 changes behind"):
                async for _ in sub:
                    pass
            again = head.client.subscribe(["kv"])
            assert len(await read_snapshot(again)) == 10
            await again.aclose()
    run(body())


def _one_call_per_service(channel: grpc.aio.Channel) -> dict[str, Callable[..., Any]]:
    return {
        "NodeInfo.Heartbeat": lambda **kw: gcs_pb2_grpc.NodeInfoStub(channel).Heartbeat(
            gcs_pb2.HeartbeatRequest(node_id=b"n"), **kw),
        "Jobs.RegisterJob": lambda **kw: gcs_pb2_grpc.JobsStub(channel).RegisterJob(
            gcs_pb2.RegisterJobRequest(), **kw),
        "Functions.GetFunction": lambda **kw: gcs_pb2_grpc.FunctionsStub(channel).GetFunction(
            gcs_pb2.GetFunctionRequest(function_id=b"f"), **kw),
        "Tables.GetEntry": lambda **kw: gcs_pb2_grpc.TablesStub(channel).GetEntry(
            gcs_pb2.GetEntryRequest(table="kv", key=b"k"), **kw),
        "Actors.GetActor": lambda **kw: gcs_pb2_grpc.ActorsStub(channel).GetActor(
            gcs_pb2.GetActorRequest(actor_id=b"a"), **kw),
        "Schedulers.ListSchedulers": lambda **kw: gcs_pb2_grpc.SchedulersStub(channel).ListSchedulers(
            gcs_pb2.ListSchedulersRequest(), **kw),
        "Admin.Ping": lambda **kw: gcs_pb2_grpc.AdminStub(channel).Ping(gcs_pb2.PingRequest(), **kw),
    }


async def _status(call: Any) -> grpc.StatusCode:
    """The call's status; for a stream, that of its first message (then it is cancelled)."""
    try:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            async for _ in call:
                call.cancel()
                break
        else:
            await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_missing_or_wrong_token_is_rejected_on_every_service() -> None:
    async def body() -> None:
        async with started_gcs() as head:
            channel = connect(head.address)
            try:
                calls = _one_call_per_service(channel)
                calls["Tables.Subscribe"] = lambda **kw: gcs_pb2_grpc.TablesStub(channel).Subscribe(
                    gcs_pb2.SubscribeRequest(tables=["kv"]), **kw)
                for name, call in calls.items():
                    for metadata in (None, token_metadata("b" * 64), token_metadata("")):
                        code = await _status(call(metadata=metadata))
                        assert code == grpc.StatusCode.UNAUTHENTICATED, (name, metadata, code)
                    code = await _status(call(metadata=token_metadata(TOKEN)))
                    assert code == grpc.StatusCode.OK, name
            finally:
                await channel.close()
            wrong = GcsClient(head.address, "b" * 64)
            try:
                with pytest.raises(UnauthenticatedError, match="token_file") as refused:
                    await wrong.ping()
                assert isinstance(refused.value, PermissionError)
                with pytest.raises(UnauthenticatedError, match="token_file"):
                    async for _ in wrong.subscribe(["kv"]):
                        pass
            finally:
                await wrong.close()
            assert len(head.service.publisher) == 0
    run(body())


def test_malformed_requests_are_invalid_argument_and_the_server_keeps_serving() -> None:
    async def body() -> None:
        async with started_gcs() as head:
            channel = connect(head.address)
            md = token_metadata(TOKEN)
            tables, nodes = gcs_pb2_grpc.TablesStub(channel), gcs_pb2_grpc.NodeInfoStub(channel)
            functions = gcs_pb2_grpc.FunctionsStub(channel)
            bad = {
                "unknown table": tables.GetEntry(gcs_pb2.GetEntryRequest(table="nope", key=b"k"),
                                                 metadata=md),
                "empty key": tables.GetEntry(gcs_pb2.GetEntryRequest(table="kv"), metadata=md),
                "typed table": tables.Put(gcs_pb2.PutRequest(table="nodes", key=b"k", value=b"x"),
                                          metadata=md),
                "negative limit": tables.ListTable(gcs_pb2.ListTableRequest(table="kv", limit=-1),
                                                   metadata=md),
                "empty task id": tables.ReportEvents(gcs_pb2.ReportEventsRequest(
                    task_events=[common_pb2.TaskEvent(state="RUNNING")]), metadata=md),
                "empty node id": nodes.RegisterNode(gcs_pb2.RegisterNodeRequest(), metadata=md),
                "empty function id": functions.ExportFunction(gcs_pb2.ExportFunctionRequest(),
                                                              metadata=md),
                "no tables": tables.Subscribe(gcs_pb2.SubscribeRequest(), metadata=md),
                "unknown subscribed table": tables.Subscribe(
                    gcs_pb2.SubscribeRequest(tables=["kv", "x"]), metadata=md),
            }
            try:
                for what, call in bad.items():
                    assert await _status(call) == grpc.StatusCode.INVALID_ARGUMENT, what
                garbage = channel.unary_unary("/cellray.Tables/GetEntry")
                assert await _status(garbage(b"\xff\xff\xff", metadata=md)) != grpc.StatusCode.OK
            finally:
                await channel.close()
            with pytest.raises(InvalidRequestError, match="unknown table 'nope'") as invalid:
                await head.client.get_entry("nope", b"k")
            assert isinstance(invalid.value, ValueError)
            assert (await head.client.ping()).num_shards == 4
            assert len(head.service.publisher) == 0
    run(body())


def test_shutdown_request_and_unreachable_address() -> None:
    async def body() -> None:
        async with started_gcs() as head:
            await head.client.shutdown()
            assert head.service.shutdown_requested.is_set()
        with socket.socket() as sock:  # bound, never listening: connections are refused
            sock.bind(("127.0.0.1", 0))
            client = GcsClient(f"127.0.0.1:{sock.getsockname()[1]}", TOKEN)
            try:
                with pytest.raises(ConnectionLostError, match="Is a cluster running"):
                    await client.ping()
            finally:
                await client.close()
    run(body())


def test_a_malformed_node_registration_is_refused_naming_the_field_and_reads_stay_clean() -> None:
    async def body() -> None:
        async with started_gcs() as head:
            gcs = head.client
            assert await gcs.register_node(node(1)) == 4
            good_id = (9).to_bytes(16, "big")
            cases = {
                "node.node_id": gcs_pb2.NodeRow(node_id=b"abc", address="127.0.0.1:7009"),
                "node.address": gcs_pb2.NodeRow(node_id=good_id, address="/.ca"),
                "port 1..65535": gcs_pb2.NodeRow(node_id=good_id, address="127.0.0.1:99999"),
                "node.load.total": gcs_pb2.NodeRow(node_id=good_id, address="127.0.0.1:7009",
                                                   load=common_pb2.NodeLoad(total={"CPU": -2})),
                "node.pid": gcs_pb2.NodeRow(node_id=good_id, address="127.0.0.1:7009", pid=-1),
            }
            for field, row in cases.items():
                with pytest.raises(InvalidRequestError, match=field.replace(".", r"\.")):
                    await gcs.register_node(row)
            with pytest.raises(InvalidRequestError, match=r"load\.available"):
                await gcs.heartbeat(node(1).node_id, common_pb2.NodeLoad(available={"CPU": float("nan")}))
            # Nothing of them was stored: the table reads back the one good node.
            rows = [gcs_pb2.NodeRow.FromString(v) for _, v in await gcs.list_table("nodes")]
            assert [r.address for r in rows] == ["127.0.0.1:7001"]
    run(body())
