"""A GcsClient through a GCS outage, with real gRPC servers in this process.

The GCS server is stopped and another one is started on the same port: a call made
meanwhile waits and completes once it is back; a subscription ends and a new one gets a
snapshot from the new server; past ``gcs_outage_timeout_s`` a call fails with an error
that says how long the GCS has been away; and a server that names another cluster is
refused for good (its owner hears of it once).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import grpc
import pytest

from runtime.exceptions import ConnectionLostError
from runtime.gcs.client import GcsClient
from runtime.gcs.reconnect import RetryPolicy
from runtime.gcs.service import GcsService
from runtime.gcs.state import GcsState
from runtime.protocol import common_pb2, gcs_pb2
from runtime.rpc.server import create_server
from runtime.testing import async_wait_for

pytestmark = pytest.mark.timeout(60)

TOKEN = "b" * 64
_T = TypeVar("_T")
FAST = RetryPolicy(timeout_s=20.0, first_s=0.01, max_s=0.05)


def run(coro: Coroutine[Any, Any, _T], timeout: float = 40.0) -> _T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Gcs:
    """One GCS server that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.server: grpc.aio.Server | None = None
        self.service: GcsService | None = None
        self.state = GcsState(num_shards=2)

    async def start(self, cluster_id: str, *, fresh: bool = False) -> None:
        if fresh:
            self.state = GcsState(num_shards=2)
        self.service = GcsService(self.state, session_dir="/tmp/cellray-test", cluster_id=cluster_id)
        self.server, self.port = await create_server("127.0.0.1", self.port, TOKEN, self.service.adders())
        self.service.start()

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.close()
        if self.server is not None:
            await self.server.stop(None)
        self.server = self.service = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def gcs_and_client(**client_kw: Any) -> AsyncIterator[tuple[Gcs, GcsClient]]:
    gcs = Gcs()
    await gcs.start("cluster-1")
    client = GcsClient(gcs.address, TOKEN, retry=client_kw.pop("retry", FAST), **client_kw)
    try:
        yield gcs, client
    finally:
        await client.close()
        await gcs.stop()


def row(key: bytes) -> gcs_pb2.NodeRow:
    return gcs_pb2.NodeRow(node_id=key, address="127.0.0.1:7001")


def test_a_call_made_while_the_gcs_is_away_completes_once_it_is_back() -> None:
    async def body() -> None:
        async with gcs_and_client() as (gcs, client):
            await client.register_node(row(b"n" * 16))
            assert client.link.connections == 1 and client.link.identity.cluster_id == "cluster-1"
            await gcs.stop()
            call = asyncio.ensure_future(client.put("kv", b"k", b"v"))
            await async_wait_for(lambda: client.link.outage.since is not None, timeout=10,
                                 what="the client to notice the outage")
            assert not call.done()
            await gcs.start("cluster-1")  # back from its storage: the same tables, the same id
            assert await call == (True, b"")
            assert client.link.outage.since is None and client.link.connections == 2
            assert await client.get_entry("kv", b"k") == b"v"
            assert await client.heartbeat(b"n" * 16, common_pb2.NodeLoad())  # it kept the node
    run(body())


def test_a_subscription_ends_with_the_gcs_and_the_next_one_waits_for_it() -> None:
    async def body() -> None:
        async with gcs_and_client() as (gcs, client):
            await client.put("kv", b"a", b"1")
            sub = client.subscribe(["kv"])
            first = [m async for m in _until_snapshot_done(sub)]
            assert [m.key for m in first] == [b"a"]
            await gcs.stop()
            with pytest.raises(ConnectionLostError):
                async for _ in sub:
                    pass
            again = asyncio.ensure_future(_snapshot(client))
            await async_wait_for(lambda: client.link.outage.since is not None, timeout=10,
                                 what="the client to notice the outage")
            gcs.state.put("kv", b"b", b"2")  # written while it was down (the storage keeps it)
            await gcs.start("cluster-1")
            assert sorted(m.key for m in await again) == [b"a", b"b"]
    run(body())


def test_past_the_outage_timeout_a_call_fails_and_says_how_long_it_waited() -> None:
    async def body() -> None:
        policy = RetryPolicy(timeout_s=0.3, first_s=0.01, max_s=0.05)
        async with gcs_and_client(retry=policy) as (gcs, client):
            await client.ping()
            await gcs.stop()
            late = r"unreachable for .* gcs_outage_timeout_s = 0\.3 s"
            with pytest.raises(ConnectionLostError, match=late):
                await client.export_function(gcs_pb2.FunctionRow(function_id=b"f" * 16, name="f"))
            await gcs.start("cluster-1")
            assert (await client.ping()).cluster_id == "cluster-1"  # and it works again after
    run(body())


def test_a_client_that_never_reached_its_gcs_fails_at_once_unless_told_to_wait() -> None:
    async def body() -> None:
        gcs = Gcs()
        with socket.socket() as sock:  # a port where no GCS answers (yet)
            sock.bind(("127.0.0.1", 0))
            gcs.port = sock.getsockname()[1]
        impatient = GcsClient(gcs.address, TOKEN, retry=FAST)
        patient = GcsClient(gcs.address, TOKEN, retry=FAST, wait_for_first_contact=True)
        try:
            with pytest.raises(ConnectionLostError, match="Is a cluster running"):
                await impatient.ping()
            joining = asyncio.ensure_future(patient.register_node(row(b"m" * 16)))
            failed = grpc.ChannelConnectivity.TRANSIENT_FAILURE
            await async_wait_for(lambda: patient._channel.get_state() == failed, timeout=10,
                                 what="the joining client's first try to fail")
            await gcs.start("cluster-1")
            assert await joining == 2
        finally:
            await impatient.close()
            await patient.close()
            await gcs.stop()
    run(body())


def test_a_gcs_back_as_another_cluster_is_refused_for_good() -> None:
    async def body() -> None:
        heard: list[ConnectionLostError] = []
        async with gcs_and_client(on_new_cluster=heard.append) as (gcs, client):
            await client.put("kv", b"k", b"v")
            await gcs.stop()
            await gcs.start("cluster-2", fresh=True)  # restarted without its storage
            for _ in range(2):
                with pytest.raises(ConnectionLostError, match="restarted without persistent storage") as err:
                    await client.get_entry("kv", b"k")
                assert getattr(err.value, "cluster_restarted", None) is True
            assert len(heard) == 1 and client.link.new_cluster is not None
            with pytest.raises(ConnectionLostError, match="new, empty cluster"):
                async for _ in client.subscribe(["kv"]):
                    pass
    run(body())


async def _until_snapshot_done(sub: AsyncIterator[gcs_pb2.PubMessage]) -> AsyncIterator[gcs_pb2.PubMessage]:
    async for msg in sub:
        if msg.snapshot_done:
            return
        yield msg


async def _snapshot(client: GcsClient) -> list[gcs_pb2.PubMessage]:
    sub = client.subscribe(["kv"])
    try:
        return [m async for m in _until_snapshot_done(sub)]
    finally:
        await sub.aclose()
