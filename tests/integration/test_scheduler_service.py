"""The global scheduler over real gRPC on 127.0.0.1, and as a real process.

A real GCS (``GcsService``) and the scheduler (``SchedulerService`` fed by a ``NodeFeed``)
run in the test's own event loop. The nodes it forwards to are tiny in-process
``NodeManager`` servers that record each ``ForwardTask`` and answer as told: recording
doubles of the peer, so the test can see exactly what a node would receive. Tests
synchronise on the scheduler's state (its view, its count of waiting calls), never on
sleeps, and assert nothing about time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest

from runtime._session import read_token, write_token
from runtime.cluster import registry
from runtime.cluster.local import LocalCluster
from runtime.cluster.process import ProcessHandle
from runtime.gcs.client import GcsClient
from runtime.gcs.service import GcsService
from runtime.gcs.state import GcsState
from runtime.protocol import common_pb2, gcs_pb2, node_pb2, node_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from runtime.rpc.channel import connect, token_metadata
from runtime.rpc.server import create_server
from runtime.scheduler import KV_PREFIX
from runtime.scheduler.feed import NodeFeed
from runtime.scheduler.policies.locality import LocalityPolicy
from runtime.scheduler.service import SchedulerService
from runtime.scheduler.state import ClusterView
from runtime.testing import async_wait_for

pytestmark = pytest.mark.timeout(60)

TOKEN = "t" * 64
MB = 1_000_000
REPO = pathlib.Path(__file__).resolve().parents[2]
_T = TypeVar("_T")
#: The generated stub class (generated gRPC modules carry no type hints).
GlobalSchedulerStub: Any = scheduler_pb2_grpc.GlobalSchedulerStub


def run(coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
    """Run one test coroutine on a fresh event loop, bounded by its own deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---- the pieces: a GCS, recording nodes, the scheduler ----

@contextlib.asynccontextmanager
async def started_gcs(token: str = TOKEN, port: int = 0,
                      cluster_id: str = "") -> AsyncIterator[tuple[str, GcsClient]]:
    """A real GCS on 127.0.0.1 (of a new cluster, or of ``cluster_id``), and a client of it."""
    state = GcsState(num_shards=2)
    service = GcsService(state, session_dir="/tmp/cellray-test", cluster_id=cluster_id)
    server, bound = await create_server("127.0.0.1", port, token, service.adders())
    service.start()
    client = GcsClient(f"127.0.0.1:{bound}", token)
    try:
        yield f"127.0.0.1:{bound}", client
    finally:
        await client.close()
        await service.close()
        await server.stop(None)


class RecordingNode(node_pb2_grpc.NodeManagerServicer):
    """A NodeManager that records every ForwardTask and accepts it, or refuses when told."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.forwarded: list[node_pb2.ForwardTaskRequest] = []

    async def ForwardTask(self, request: node_pb2.ForwardTaskRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> node_pb2.ForwardTaskReply:
        self.forwarded.append(request)
        if self.refuse:
            return node_pb2.ForwardTaskReply(accepted=False, why_not=self.refuse)
        return node_pb2.ForwardTaskReply(accepted=True)


@dataclass
class Cluster:
    """A GCS, a scheduler fed from it, and the recording nodes the test added."""

    gcs: GcsClient
    view: ClusterView
    service: SchedulerService
    scheduler: Any  # GlobalSchedulerStub
    nodes: dict[bytes, RecordingNode] = field(default_factory=dict)
    addresses: dict[bytes, str] = field(default_factory=dict)
    servers: list[grpc.aio.Server] = field(default_factory=list)

    async def add_node(self, node_id: bytes, total: dict[str, float], *, available: dict[str, float] | None = None,
                       queue_length: int = 0, refuse: str = "", dead: bool = False) -> RecordingNode:
        """Serve a recording node, register it in the GCS, wait until the scheduler sees it.

        ``dead``: the node's server is stopped again before it registers, so its address
        refuses connections while the GCS still lists it alive (it died since its last heartbeat).
        """
        node = RecordingNode(refuse)
        server, port = await create_server("127.0.0.1", 0, TOKEN,
                                           [(node_pb2_grpc.add_NodeManagerServicer_to_server, node)])
        if dead:
            await server.stop(None)
        else:
            self.servers.append(server)
        address = f"127.0.0.1:{port}"
        load = common_pb2.NodeLoad(total=total, available=total if available is None else available,
                                   queue_length=queue_length)
        await self.gcs.register_node(gcs_pb2.NodeRow(node_id=node_id, address=address, load=load))
        await async_wait_for(lambda: self.view.node(node_id) is not None, what=f"the scheduler to see {node_id!r}")
        self.nodes[node_id], self.addresses[node_id] = node, address
        return node

    async def schedule(self, request: scheduler_pb2.ScheduleRequest) -> scheduler_pb2.ScheduleReply:
        reply: scheduler_pb2.ScheduleReply = await self.scheduler.Schedule(request, metadata=token_metadata(TOKEN))
        return reply


@contextlib.asynccontextmanager
async def started_cluster() -> AsyncIterator[Cluster]:
    async with started_gcs() as (gcs_address, gcs), \
            started_scheduler(gcs_address) as (view, service, stub):
        cluster = Cluster(gcs, view, service, stub)
        try:
            yield cluster
        finally:
            for server in cluster.servers:
                await server.stop(None)


@contextlib.asynccontextmanager
async def started_scheduler(gcs_address: str) -> AsyncIterator[tuple[ClusterView, SchedulerService, Any]]:
    view = ClusterView(LocalityPolicy(rng=random.Random(0)))
    service = SchedulerService(view, name="gs-test", token=TOKEN, forward_timeout=10)
    server, port = await create_server("127.0.0.1", 0, TOKEN, service.adders())
    gcs = GcsClient(gcs_address, TOKEN)
    feed = NodeFeed(gcs, view, service.view_changed, min_backoff=0.01, max_backoff=0.1)
    feeding = asyncio.create_task(feed.run())
    channel = connect(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(feed.synced.wait(), 10)
        yield view, service, GlobalSchedulerStub(channel)
    finally:
        await channel.close(None)
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        await server.stop(None)
        await service.close()
        await gcs.close()


A, B, C, D, HOME = (bytes([c]) * 16 for c in b"ABCDH")


def request(task: bytes = b"t" * 16, resources: dict[str, float] | None = None,
            inputs: list[scheduler_pb2.InputLocation] | None = None, home: bytes = HOME) -> scheduler_pb2.ScheduleRequest:
    spec = common_pb2.TaskSpec(task_id=task, name="f", function_id=b"F" * 20,
                              resources={"CPU": 1} if resources is None else resources)
    return scheduler_pb2.ScheduleRequest(
        spec=spec, from_node_id=home, reason="queue over threshold", inputs=inputs or [],
        args=[common_pb2.ObjectData(object_id=b"o" * 20, size=50 * MB, node_id=B)], home_address="127.0.0.1:1")


def input_on(node_id: bytes, size: int = 50 * MB) -> scheduler_pb2.InputLocation:
    return scheduler_pb2.InputLocation(object_id=b"o" * 20, size=size, node_ids=[node_id])


# ---- the service ----

def test_a_spilled_task_is_forwarded_to_the_node_holding_its_input() -> None:
    async def body() -> None:
        async with started_cluster() as c:
            a = await c.add_node(A, {"CPU": 4})
            b = await c.add_node(B, {"CPU": 4})
            reply = await c.schedule(request(inputs=[input_on(B)]))
            assert (reply.node_id, reply.node_address, reply.scheduler) == (B, c.addresses[B], "gs-test")
            assert a.forwarded == [] and len(b.forwarded) == 1
            got = b.forwarded[0]
            assert got.spec.task_id == b"t" * 16 and got.spec.name == "f"
            assert list(got.args) == list(request().args)
            assert (got.home_address, got.home_node_id, got.scheduler, got.reason) == (
                "127.0.0.1:1", HOME, "gs-test", "queue over threshold")
            assert c.service.statistics().placed == 1
    run(body())


def test_a_burst_of_spills_is_spread_by_optimistic_charging() -> None:
    async def body() -> None:
        async with started_cluster() as c:
            a = await c.add_node(A, {"CPU": 2})
            b = await c.add_node(B, {"CPU": 2})
            replies = await asyncio.gather(*(c.schedule(request(bytes([i]) * 16)) for i in range(4)))
            assert sorted(r.node_id for r in replies) == [A, A, B, B]
            assert (len(a.forwarded), len(b.forwarded)) == (2, 2)
    run(body())


def test_the_spilling_node_gets_its_task_back_in_the_reply_when_it_is_the_best_place() -> None:
    async def body() -> None:
        async with started_cluster() as c:
            home = await c.add_node(HOME, {"CPU": 4, "sim": 1}, available={"CPU": 0}, queue_length=8)
            other = await c.add_node(B, {"CPU": 1}, available={"CPU": 0}, queue_length=8)
            # The 50 MB input is at home and B is as busy: back home, told in the reply only.
            reply = await c.schedule(request(inputs=[input_on(HOME)]))
            assert reply.node_id == HOME and "locality" in reply.why
            # Only home has "sim": it runs there.
            reply = await c.schedule(request(b"u" * 16, resources={"sim": 1}))
            assert reply.node_id == HOME
            # B refuses: home could run the task, so it gets it back rather than keep waiting.
            other.refuse = "draining"
            reply = await c.schedule(request(b"v" * 16))
            assert reply.node_id == HOME
            assert home.forwarded == []  # nothing is forwarded to the node that spilled it
    run(body())


def test_a_hard_affinity_to_a_node_not_in_the_view_is_unschedulable() -> None:
    async def body() -> None:
        async with started_cluster() as c:
            await c.add_node(A, {"CPU": 4})
            req = request()
            req.spec.strategy.kind, req.spec.strategy.node_id = "NODE_AFFINITY", b"Z" * 16
            reply = await c.schedule(req)
            assert reply.node_id == b"" and "is not in the cluster" in reply.unschedulable
    run(body())


def test_an_infeasible_task_waits_until_a_fitting_node_registers() -> None:
    async def body() -> None:
        async with started_cluster() as c:
            await c.add_node(A, {"CPU": 4})
            call = asyncio.create_task(c.schedule(request(resources={"CPU": 1, "GPU": 1})))
            await async_wait_for(lambda: c.service.statistics().waiting == 1, what="the task to wait for a GPU node")
            await c.add_node(B, {"CPU": 2}, available={"CPU": 0})  # a change, but still no GPU
            await async_wait_for(lambda: c.service.statistics().waiting == 1, what="the task to wait again")
            assert not call.done()
            gpu = await c.add_node(C, {"CPU": 1, "GPU": 1})
            reply = await call
            assert reply.node_id == C and len(gpu.forwarded) == 1
            assert c.service.statistics().waiting == 0
    run(body())


@pytest.mark.parametrize("failure", ["dead", "refuses"])
def test_a_node_that_fails_forward_task_is_skipped(failure: str) -> None:
    async def body() -> None:
        async with started_cluster() as c:
            # D holds the input, so it is tried first; it died (connection refused) or refuses.
            d = await c.add_node(D, {"CPU": 4}, dead=failure == "dead", refuse="draining" if failure == "refuses" else "")
            a = await c.add_node(A, {"CPU": 4})
            reply = await c.schedule(request(inputs=[input_on(D)]))
            assert reply.node_id == A and len(a.forwarded) == 1
            assert len(d.forwarded) == (1 if failure == "refuses" else 0)
            stats = c.service.statistics()
            assert (stats.placed, stats.refused) == (1, 1)
            charged = c.view.node(D)
            assert charged is not None and charged.charged == 0  # the refused placement was refunded
    run(body())


def test_when_every_fitting_node_fails_the_task_waits_for_news() -> None:
    async def body() -> None:
        async with started_cluster() as c:
            d = await c.add_node(D, {"CPU": 4}, refuse="draining")
            call = asyncio.create_task(c.schedule(request()))
            await async_wait_for(lambda: c.service.statistics().waiting == 1, what="the task to wait after a refusal")
            assert len(d.forwarded) == 1
            d.refuse = ""
            assert await c.gcs.heartbeat(D, common_pb2.NodeLoad(total={"CPU": 4}, available={"CPU": 4}))
            reply = await call  # the new row makes D worth another try
            assert reply.node_id == D and len(d.forwarded) == 2
    run(body())


def test_a_cancelled_call_stops_waiting() -> None:
    async def body() -> None:
        async with started_cluster() as c:
            call = c.scheduler.Schedule(request(resources={"GPU": 1}), metadata=token_metadata(TOKEN))
            await async_wait_for(lambda: c.service.statistics().waiting == 1, what="the task to wait")
            call.cancel()
            await async_wait_for(lambda: c.service.statistics().waiting == 0, what="the wait to end")
            with pytest.raises(asyncio.CancelledError):
                await call
    run(body())


def test_malformed_requests_are_invalid_arguments() -> None:
    async def body() -> None:
        async with started_cluster() as c:
            await c.add_node(A, {"CPU": 4})
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.schedule(scheduler_pb2.ScheduleRequest())
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "task_id" in (err.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.schedule(request(resources={"CPU": -1}))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and ">= 0" in (err.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.scheduler.Schedule(request())  # no token
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert c.nodes[A].forwarded == []
    run(body())


def test_the_feed_resubscribes_when_the_gcs_comes_back() -> None:
    async def body() -> None:
        async with contextlib.AsyncExitStack() as stack:
            first_gcs = contextlib.AsyncExitStack()
            stack.push_async_callback(first_gcs.aclose)  # torn down last, if the test fails early
            address, gcs = await first_gcs.enter_async_context(started_gcs(cluster_id="cluster-1"))
            await gcs.register_node(gcs_pb2.NodeRow(node_id=A, address="127.0.0.1:1",
                                                    load=common_pb2.NodeLoad(total={"CPU": 1})))
            view, _, _ = await stack.enter_async_context(started_scheduler(address))
            assert [n.node_id for n in view.nodes()] == [A]
            cluster_id = (await gcs.ping()).cluster_id
            await first_gcs.aclose()  # the GCS goes away; the view keeps its last picture
            assert [n.node_id for n in view.nodes()] == [A]
            port = int(address.rsplit(":", 1)[1])
            # The same cluster back (from its storage), whose tables changed meanwhile: without A.
            async with started_gcs(port=port, cluster_id=cluster_id) as (_, gcs2):
                await gcs2.register_node(gcs_pb2.NodeRow(node_id=B, address="127.0.0.1:2",
                                                         load=common_pb2.NodeLoad(total={"CPU": 1})))
                await async_wait_for(lambda: [n.node_id for n in view.nodes()] == [B],
                                     what="the view to follow the new GCS")
    run(body())


def test_the_feed_ends_when_the_gcs_comes_back_as_another_cluster() -> None:
    async def body() -> None:
        async with contextlib.AsyncExitStack() as stack:
            first_gcs = contextlib.AsyncExitStack()
            stack.push_async_callback(first_gcs.aclose)
            address, _ = await first_gcs.enter_async_context(started_gcs(cluster_id="cluster-1"))
            view = ClusterView(LocalityPolicy(rng=random.Random(0)))
            client = GcsClient(address, TOKEN)
            stack.push_async_callback(client.close)
            feed = NodeFeed(client, view, lambda: None, min_backoff=0.01, max_backoff=0.1)
            feeding = asyncio.create_task(feed.run())
            await asyncio.wait_for(feed.synced.wait(), 10)
            await first_gcs.aclose()
            port = int(address.rsplit(":", 1)[1])
            async with started_gcs(port=port, cluster_id="cluster-2"):  # restarted without storage
                await asyncio.wait_for(feeding, 10)  # run() returns: its cluster is gone
            assert client.link.new_cluster is not None
    run(body())


# ---- the process ----

def start_scheduler(session: pathlib.Path, gcs_address: str, name: str, *extra: str) -> ProcessHandle:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    args = ["--gcs-address", gcs_address, "--token-file", str(session / "token"), "--session-dir", str(session),
            "--name", name, "--parent-pid", str(os.getpid()), "--log-level", "DEBUG", *extra]
    return ProcessHandle(name, "runtime.scheduler", args, session / "logs" / f"{name}.log",
                         session / f"{name}.ready", env=env)


def test_the_scheduler_process_registers_places_and_stops_cleanly(tmp_path: pathlib.Path) -> None:
    session = tmp_path / "session"
    session.mkdir()
    token = read_token(write_token(session))

    async def body() -> None:
        async with started_gcs(token) as (gcs_address, gcs):
            node = RecordingNode()
            server, port = await create_server("127.0.0.1", 0, token,
                                               [(node_pb2_grpc.add_NodeManagerServicer_to_server, node)])
            handle = start_scheduler(session, gcs_address, "gs-7", "--policy", "spread")
            try:
                info = await asyncio.to_thread(handle.wait_ready, 30)
                assert (info["pid"], info["name"], info["address"]) == (
                    handle.pid, "gs-7", f"127.0.0.1:{info['port']}")
                assert await gcs.get_entry("kv", KV_PREFIX + b"gs-7") == info["address"].encode()
                assert await gcs.list_schedulers() == [info["address"]]
                # A node registers after the scheduler started: it learns of it from the feed.
                await gcs.register_node(gcs_pb2.NodeRow(node_id=B, address=f"127.0.0.1:{port}",
                                                        load=common_pb2.NodeLoad(total={"CPU": 1})))
                async with connect(info["address"]) as channel:
                    reply = await GlobalSchedulerStub(channel).Schedule(
                        request(), metadata=token_metadata(token))
                assert (reply.node_id, reply.scheduler) == (B, "gs-7")
                assert [r.spec.task_id for r in node.forwarded] == [b"t" * 16]
                assert node.forwarded[0].scheduler == "gs-7"
            finally:
                code = await asyncio.to_thread(handle.stop, 10)
                await server.stop(None)
            assert code == 0, handle.log_path.read_text()
            assert await gcs.get_entry("kv", KV_PREFIX + b"gs-7") is None
            assert await gcs.list_schedulers() == []
            log = handle.log_path.read_text()
            assert f"gs-7[{handle.pid}]" in log and "global scheduler gs-7 stopped" in log

    run(body(), timeout=50)


def test_the_scheduler_process_exits_with_its_head(tmp_path: pathlib.Path) -> None:
    session = tmp_path / "session"
    session.mkdir()
    token = read_token(write_token(session))
    head = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)

    async def body() -> int | None:
        async with started_gcs(token) as (gcs_address, _):
            handle = start_scheduler(session, gcs_address, "gs-0", "--head-pid", str(head.pid))
            try:
                await asyncio.to_thread(handle.wait_ready, 30)
                assert head.stdin is not None
                head.stdin.close()  # the stand-in head exits
                head.wait(10)
                return await asyncio.to_thread(handle.popen.wait, 20)
            finally:
                await asyncio.to_thread(handle.stop, 10)

    try:
        assert run(body(), timeout=50) == 0
    finally:
        head.kill()
        head.wait()


@pytest.mark.cluster
def test_local_cluster_starts_and_stops_its_global_schedulers(tmp_session_root: pathlib.Path) -> None:
    with LocalCluster([], session_root=tmp_session_root, global_schedulers=2) as cluster:
        assert [s.name for s in cluster.schedulers] == ["gs-0", "gs-1"]
        assert cluster.session_dir is not None and cluster.token_file is not None
        recorded = registry.read(cluster.session_dir)
        assert cluster.head is not None and recorded is not None and recorded.head == cluster.head.pid
        raw = json.loads((cluster.session_dir / registry.PROCESSES_FILE).read_text())
        assert raw["schedulers"] == [s.pid for s in cluster.schedulers]

        token = read_token(cluster.token_file)

        async def kv() -> dict[bytes, bytes]:
            async with GcsClient(cluster.address, token) as gcs:
                return {k: v for k, v in await gcs.list_table("kv") if k.startswith(KV_PREFIX)}

        assert asyncio.run(kv()) == {KV_PREFIX + i["name"].encode(): i["address"].encode()
                                     for i in cluster.scheduler_info}
    assert [s.popen.returncode for s in cluster.schedulers] == [0, 0]
