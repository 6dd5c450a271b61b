"""The node manager over real gRPC on 127.0.0.1, with fake workers, in the test's own loop.

A real GCS (``GcsService``) and a ``NodeManager`` behind its ``NodeServicer`` run in the
test's event loop. The manager's worker pool is a ``FakePool``: it records the worker ids
the node asks it to start and reports exits like a real pool would, but starts no
process. A "worker" is a Session stream the test opens itself (Hello of kind "worker"
with an id the pool was asked to start); it receives ExecuteTask ops and answers with
TaskResult ops. Drivers are Session streams too. Tests wait on ops and on conditions,
never on sleeps, and assert nothing about time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle
import grpc
import pytest

from runtime import _ids
from runtime.config import Settings
from runtime.exceptions import TaskCancelledError
from runtime.gcs.client import GcsClient
from runtime.gcs.service import GcsService
from runtime.gcs.state import GcsState
from runtime.node import actions
from runtime.node.dispatch import TABLE, missing_handlers
from runtime.node.manager import NodeManager
from runtime.node.service import NodeServicer
from runtime.protocol import codec, common_pb2, gcs_pb2, node_pb2, node_pb2_grpc
from runtime.rpc.channel import connect, token_metadata
from runtime.rpc.server import create_server
from runtime.testing import async_wait_for

pytestmark = pytest.mark.timeout(60)

TOKEN = "n" * 64
MD = token_metadata(TOKEN)
_T = TypeVar("_T")
#: The generated stub class (generated gRPC modules carry no type hints).
NodeManagerStub: Any = node_pb2_grpc.NodeManagerStub


def run(coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
    """Run one test coroutine on a fresh event loop, bounded by its own deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---- the pieces: fake worker pool, Session clients, a node with its GCS ----------------

class FakePool:
    """A worker pool that starts no process: it records, and reports exits when killed."""

    def __init__(self) -> None:
        self.started: list[bytes] = []
        self.killed: list[bytes] = []
        self.stopped: list[bytes] = []
        self.exited: set[bytes] = set()
        self.on_exit: Callable[[bytes, int | None], None] | None = None

    async def start(self, worker_id: bytes) -> bytes:
        self.started.append(worker_id)
        return worker_id

    def stop(self, worker_id: bytes) -> None:
        self.stopped.append(worker_id)

    def kill(self, worker_id: bytes) -> None:
        """Like SIGKILL: the "process" exits, and the exit is reported a moment later."""
        self.killed.append(worker_id)
        if worker_id not in self.exited:
            self.exited.add(worker_id)
            asyncio.get_running_loop().call_soon(self._report_exit, worker_id, -9)

    def _report_exit(self, worker_id: bytes, code: int) -> None:
        assert self.on_exit is not None, "the test must wire on_exit to the manager"
        self.on_exit(worker_id, code)

    async def stop_all(self) -> None:
        self.exited.update(self.started)


class SessionClient:
    """One Session stream opened by the test: a driver, or a worker with a given id."""

    def __init__(self, address: str, kind: str, worker_id: bytes = b"",
                 client_id: bytes | None = None) -> None:
        self.kind = kind
        self.worker_id = worker_id
        self.client_id = _ids.new_id() if client_id is None else client_id
        self._channel = connect(address)
        self._outgoing: asyncio.Queue[node_pb2.ClientBatch | None] = asyncio.Queue()
        self.received: list[node_pb2.NodeOp] = []
        self._taken = 0
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = asyncio.Event()

    def hello(self) -> node_pb2.ClientOp:
        return node_pb2.ClientOp(hello=node_pb2.Hello(
            kind=self.kind, client_id=self.client_id, worker_id=self.worker_id, pid=os.getpid(),
            python_version=platform.python_version(), cloudpickle_version=cloudpickle.__version__))

    async def _requests(self) -> AsyncIterator[node_pb2.ClientBatch]:
        while True:
            batch = await self._outgoing.get()
            if batch is None:
                return
            yield batch

    async def open(self, first: node_pb2.ClientOp | None = None) -> node_pb2.Welcome:
        """Open the stream with a Hello (or ``first``); return the node's Welcome."""
        self.send(first if first is not None else self.hello())
        self._call = NodeManagerStub(self._channel).Session(self._requests(), metadata=MD)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        op = await self.next_op("welcome")
        return op.welcome

    async def _read(self) -> None:
        try:
            async for batch in self._call:
                self.received.extend(batch.ops)
        except grpc.aio.AioRpcError as e:
            self.error = e
        finally:
            self.ended.set()

    def send(self, *ops: node_pb2.ClientOp) -> None:
        self._outgoing.put_nowait(node_pb2.ClientBatch(ops=list(ops)))

    async def next_op(self, kind: str, timeout: float = 10.0) -> node_pb2.NodeOp:
        """The next op received of ``kind`` (ops of other kinds before it are skipped)."""
        def find() -> node_pb2.NodeOp | None:
            while self._taken < len(self.received):
                op = self.received[self._taken]
                self._taken += 1
                if op.WhichOneof("op") == kind:
                    return op
            if self.ended.is_set():
                raise AssertionError(f"the {self.kind}'s stream ended ({self.error}) before a {kind!r} op")
            return None
        op = await async_wait_for(find, timeout, what=f"a {kind!r} op for the {self.kind}")
        assert op is not None
        return op

    async def break_stream(self) -> None:
        """End the stream abruptly, as a worker process that died would."""
        if self._call is not None:
            self._call.cancel()
        await self.ended.wait()

    async def close(self) -> None:
        self._outgoing.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._channel.close()


@dataclass
class Node:
    manager: NodeManager
    pool: FakePool
    gcs: GcsState
    address: str
    clients: list[SessionClient]

    async def driver(self) -> SessionClient:
        client = SessionClient(self.address, "driver")
        self.clients.append(client)
        await client.open()
        return client

    async def worker(self, index: int = 0) -> SessionClient:
        """The Session of the ``index``-th worker the node asked the pool for (once asked)."""
        await async_wait_for(lambda: len(self.pool.started) > index,
                             what=f"the node to ask for worker #{index}")
        client = SessionClient(self.address, "worker", worker_id=self.pool.started[index])
        self.clients.append(client)
        await client.open()
        return client


@contextlib.asynccontextmanager
async def started_node(tmp_path: Path, cpus: float = 2.0) -> AsyncIterator[Node]:
    """A real GCS and a node manager with a fake worker pool, both on 127.0.0.1."""
    gcs_state = GcsState(num_shards=2)
    gcs_service = GcsService(gcs_state, session_dir=str(tmp_path))
    gcs_server, gcs_port = await create_server("127.0.0.1", 0, TOKEN, gcs_service.adders())
    gcs_service.start()
    servicer = NodeServicer()
    node_server, node_port = await create_server(
        "127.0.0.1", 0, TOKEN, [(node_pb2_grpc.add_NodeManagerServicer_to_server, servicer)])
    pool = FakePool()
    address = f"127.0.0.1:{node_port}"
    session_dir = tmp_path / f"session-{os.urandom(6).hex()}"
    (session_dir / "logs").mkdir(parents=True)
    manager = None
    node = None
    try:
        manager = NodeManager(
            node_id=_ids.new_id(), address=address, gcs_address=f"127.0.0.1:{gcs_port}",
            token=TOKEN, token_file=str(tmp_path / "token"), session_dir=session_dir,
            resources={"CPU": cpus}, store_capacity=64 * 1024 * 1024,
            settings=Settings(heartbeat_ms=50, event_flush_ms=10).validate(), pool=pool)
        pool.on_exit = manager.worker_exited
        servicer.attach(manager)
        await manager.start(prestart_workers=0)
        node = Node(manager, pool, gcs_state, address, [])
        yield node
    finally:
        if node is not None:
            for client in node.clients:
                await client.close()
        if manager is not None and not manager.stopped.is_set():
            await manager.stop()
        await node_server.stop(None)
        await gcs_service.close()
        await gcs_server.stop(None)


def spec(task_id: bytes, *, max_retries: int = 0, cpus: float = 1.0) -> node_pb2.ClientOp:
    return node_pb2.ClientOp(submit=common_pb2.TaskSpec(
        task_id=task_id, job_id=b"\x00\x00\x00\x01", name="f", num_returns=1, function_id=b"fn" * 10,
        resources={"CPU": cpus}, max_retries=max_retries))


def result(task_id: bytes, value: bytes) -> node_pb2.ClientOp:
    ret = common_pb2.ObjectData(object_id=_ids.object_id(task_id, 1), inline=value, size=len(value))
    return node_pb2.ClientOp(result=node_pb2.TaskResult(task_id=task_id, returns=[ret]))


# ---- the tests --------------------------------------------------------------------------

def test_dispatch_table_covers_every_action_type() -> None:
    assert set(TABLE) == set(actions.ACTION_TYPES)
    assert missing_handlers() == []
    partial = {k: v for k, v in TABLE.items() if k is not actions.ForwardLog}
    assert missing_handlers(partial) == ["ForwardLog"]


def test_a_submitted_task_runs_on_a_worker_and_its_result_reaches_the_driver(tmp_path: Path) -> None:
    async def main() -> None:
        async with started_node(tmp_path) as node:
            driver = await node.driver()
            task_id = _ids.new_id()
            driver.send(spec(task_id))
            worker = await node.worker(0)
            execute = (await worker.next_op("execute")).execute
            assert execute.spec.task_id == task_id
            assert execute.spec.owner_id == driver.client_id
            worker.send(result(task_id, b"forty-two"))
            obj = (await driver.next_op("object")).object
            assert obj.object_id == _ids.object_id(task_id, 1)
            assert obj.inline == b"forty-two"
            # The task's events reach the GCS through the reporter's batches.
            def state_in_gcs() -> str:
                raw = node.gcs.get("tasks", task_id)
                return gcs_pb2.TaskRow.FromString(raw).state if raw else ""
            await async_wait_for(lambda: state_in_gcs() == "FINISHED",
                                 what="the task's FINISHED event in the GCS")
    run(main())


def test_put_then_get_of_an_inline_object(tmp_path: Path) -> None:
    async def main() -> None:
        async with started_node(tmp_path) as node:
            driver = await node.driver()
            oid = _ids.object_id(_ids.new_id(), 0)
            driver.send(node_pb2.ClientOp(put=common_pb2.ObjectData(object_id=oid, inline=b"hello", size=5)),
                        node_pb2.ClientOp(get=node_pb2.GetObjects(object_ids=[oid])))
            obj = (await driver.next_op("object")).object
            assert (obj.object_id, obj.inline, obj.size) == (oid, b"hello", 5)
            assert obj.node_id == node.manager.node_id
    run(main())


def test_a_broken_worker_stream_retries_the_task_on_another_worker(tmp_path: Path) -> None:
    async def main() -> None:
        async with started_node(tmp_path, cpus=1.0) as node:
            driver = await node.driver()
            task_id = _ids.new_id()
            driver.send(spec(task_id, max_retries=1))
            first = await node.worker(0)
            assert (await first.next_op("execute")).execute.spec.attempt == 0
            await first.break_stream()
            # The node makes sure the process is gone; its exit puts the task back in the queue.
            await async_wait_for(lambda: first.worker_id in node.pool.killed,
                                 what="the node to kill the worker whose stream broke")
            second = await node.worker(1)
            assert second.worker_id != first.worker_id
            execute = (await second.next_op("execute")).execute
            assert (execute.spec.task_id, execute.spec.attempt) == (task_id, 1)
            second.send(result(task_id, b"second time"))
            assert (await driver.next_op("object")).object.inline == b"second time"
    run(main())


def test_cancelling_a_queued_task_fails_its_result(tmp_path: Path) -> None:
    async def main() -> None:
        async with started_node(tmp_path, cpus=1.0) as node:
            driver = await node.driver()
            task_id = _ids.new_id()
            driver.send(spec(task_id))
            # No worker connects: the task stays queued while the node waits for one.
            await async_wait_for(lambda: node.manager.state.queue_length() == 1,
                                 what="the task to be queued")
            driver.send(node_pb2.ClientOp(cancel=node_pb2.CancelTask(task_id=task_id)),
                        node_pb2.ClientOp(get=node_pb2.GetObjects(object_ids=[_ids.object_id(task_id, 1)])))
            obj = (await driver.next_op("object")).object
            assert obj.object_id == _ids.object_id(task_id, 1)
            assert codec.is_error(obj.inline)
            assert isinstance(codec.deserialize(obj.inline), TaskCancelledError)
            assert node.manager.state.queue_length() == 0
            # A worker that connects now is given the next task, not the cancelled one (the
            # ops of one stream arrive in order, so a dispatch of the first would come first).
            worker = await node.worker(0)
            later = _ids.new_id()
            driver.send(spec(later))
            assert (await worker.next_op("execute")).execute.spec.task_id == later
    run(main())


def test_get_node_info(tmp_path: Path) -> None:
    async def main() -> None:
        async with started_node(tmp_path, cpus=3.0) as node:
            channel = connect(node.address)
            try:
                reply = await NodeManagerStub(channel).GetNodeInfo(node_pb2.GetNodeInfoRequest(), metadata=MD)
            finally:
                await channel.close()
            assert reply.node_id == node.manager.node_id
            assert reply.address == node.address
            assert reply.pid == os.getpid()
            assert reply.load.total["CPU"] == 3.0
            assert reply.session_dir == str(node.manager.session_dir)
    run(main())


def test_pull_object_streams_an_inline_object_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    async def main() -> None:
        async with started_node(tmp_path) as node:
            driver = await node.driver()
            oid = _ids.object_id(_ids.new_id(), 0)
            driver.send(node_pb2.ClientOp(put=common_pb2.ObjectData(object_id=oid, inline=b"bytes", size=5)),
                        node_pb2.ClientOp(get=node_pb2.GetObjects(object_ids=[oid])))
            await driver.next_op("object")  # the put is applied
            channel = connect(node.address)
            try:
                stub = NodeManagerStub(channel)
                chunks = [c async for c in stub.PullObject(node_pb2.PullObjectRequest(object_id=oid),
                                                           metadata=MD)]
                assert [(c.data, c.total_size) for c in chunks] == [(b"bytes", 5)]
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in stub.PullObject(node_pb2.PullObjectRequest(object_id=b"\x01" * 20),
                                                   metadata=MD):
                        pass
                assert info.value.code() == grpc.StatusCode.NOT_FOUND
                assert "not held on node" in (info.value.details() or "")
            finally:
                await channel.close()
    run(main())


def test_a_bad_hello_is_rejected_with_invalid_argument(tmp_path: Path) -> None:
    async def main() -> None:
        async with started_node(tmp_path) as node:
            for bad in (SessionClient(node.address, "robot"),
                        SessionClient(node.address, "driver", client_id=b"short")):
                node.clients.append(bad)
                with pytest.raises(AssertionError, match="stream ended"):
                    await bad.open()
                assert bad.error is not None
                assert bad.error.code() == grpc.StatusCode.INVALID_ARGUMENT
            not_hello = SessionClient(node.address, "driver")
            node.clients.append(not_hello)
            with pytest.raises(AssertionError, match="stream ended"):
                await not_hello.open(node_pb2.ClientOp(get=node_pb2.GetObjects()))
            assert not_hello.error is not None
            assert not_hello.error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(node.manager.sessions) == 0
    run(main())


def test_actor_rows_and_released_names_reach_the_gcs_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        async with started_node(tmp_path) as node:
            reporter = node.manager.reporter
            actor_id = _ids.new_id()
            assert node.gcs.claim_actor_name("ns", "counter", actor_id)[0]
            reporter.put_actor(actions.PutActor(gcs_pb2.ActorRow(actor_id=actor_id, state="ALIVE")))
            reporter.put_actor(actions.PutActor(gcs_pb2.ActorRow(actor_id=actor_id, state="DEAD")))
            reporter.release_actor_name(actions.ReleaseActorName("ns", "counter"))
            await reporter.flush()
            assert reporter.pending() == 0
            row = node.gcs.get_actor(actor_id)
            assert row is not None
            # The last transition wins, and the node fills in where the actor lived.
            assert (row.state, row.node_address) == ("DEAD", node.address)
            assert node.gcs.lookup_actor_name("ns", "counter") in (None, b"")
    run(main())


def test_a_node_the_gcs_declared_dead_is_fenced_refuses_work_and_tells_its_drivers(tmp_path: Path) -> None:
    """Issue 12, point 4: a node paused past the timeout must not carry on under its dead id."""
    async def main() -> None:
        async with started_node(tmp_path) as node:
            manager = node.manager
            driver = await node.driver()
            cause = "no heartbeat for 9.0 s (timeout 5 s)"
            node.gcs.unregister_node(manager.node_id, cause)  # as the GCS does while the node is paused
            fenced = await async_wait_for(lambda: manager.fenced, what="the node to learn it died")
            assert f"({cause}): it must rejoin under a new id" in fenced
            assert manager.stop_requested.is_set()  # the daemon stops it, then rejoins as a new node
            channel = connect(node.address)
            try:
                stub = NodeManagerStub(channel)
                reply = await stub.ForwardTask(node_pb2.ForwardTaskRequest(
                    spec=common_pb2.TaskSpec(task_id=_ids.new_id(), function_id=b"fn" * 10), home_address="127.0.0.1:1",
                    home_node_id=_ids.new_id()), metadata=MD)
                assert not reply.accepted and "was declared dead and takes no work" in reply.why_not
                actor = _ids.new_id()
                calls = await stub.ForwardActorCalls(node_pb2.ForwardActorCallsRequest(
                    actor_id=actor, calls=[node_pb2.ForwardTaskRequest(
                        spec=common_pb2.TaskSpec(task_id=_ids.new_id(), actor_id=actor),
                        home_address="127.0.0.1:1")]), metadata=MD)
                assert not calls.accepted
            finally:
                await channel.close()
            await manager.stop()
            await driver.ended.wait()
            assert driver.error is not None and driver.error.code() == grpc.StatusCode.UNAVAILABLE
            assert "was declared dead" in (driver.error.details() or "")
            assert "call runtime.init() again to connect to a live node" in (driver.error.details() or "")
            # It reported nothing under its dead id: its row keeps the cause it died of.
            row = gcs_pb2.NodeRow.FromString(node.gcs.get("nodes", manager.node_id) or b"")
            assert not row.alive and row.death_cause == cause
    run(main())


def test_peers_follow_the_nodes_and_schedulers_in_the_gcs(tmp_path: Path) -> None:
    async def main() -> None:
        async with started_node(tmp_path) as node:
            peers = node.manager.peers
            gcs = GcsClient(node.manager.gcs_address, TOKEN)
            try:
                other = _ids.new_id()
                load = common_pb2.NodeLoad(total={"CPU": 8.0}, available={"CPU": 8.0})
                await gcs.register_node(gcs_pb2.NodeRow(node_id=other, address="127.0.0.1:1",
                                                        alive=True, load=load))
                await gcs.register_scheduler("s0", "127.0.0.1:2")
                await async_wait_for(lambda: peers.addresses.get(other) == "127.0.0.1:1",
                                     what="the node to learn of its new peer")
                await async_wait_for(lambda: peers.schedulers == ["127.0.0.1:2"],
                                     what="the node to learn of the scheduler replica")
                await gcs.unregister_node(other, "test")
                await async_wait_for(lambda: other not in peers.addresses,
                                     what="the node to forget its dead peer")
            finally:
                await gcs.close()
    run(main())


class RecordingNode:
    """A stand-in for the manager that only records the named calls the servicer makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.stop_requested = asyncio.Event()

    def hello(self, conn: Any, hello: node_pb2.Hello) -> node_pb2.NodeOp:
        conn.client_id = hello.client_id
        self.calls.append(("hello", hello.kind))
        return node_pb2.NodeOp(welcome=node_pb2.Welcome(node_id=b"\x05" * 16))

    def handle(self, conn: Any, batch: node_pb2.ClientBatch) -> None:
        self.calls.append(("handle", [op.WhichOneof("op") for op in batch.ops]))

    def disconnect(self, conn: Any) -> None:
        self.calls.append(("disconnect", conn.client_id))

    def accept_forwarded(self, request: node_pb2.ForwardTaskRequest) -> None:
        self.calls.append(("accept_forwarded", request.spec.task_id))

    def remote_result(self, request: node_pb2.ReportResultsRequest) -> None:
        self.calls.append(("remote_result", request.task_id))

    def release_remote_holds(self, object_ids: list[bytes], node_id: bytes | None) -> None:
        self.calls.append(("release_remote_holds", (object_ids, node_id)))

    def cancel_forwarded(self, cancels: list[node_pb2.CancelTask], home_node_id: bytes) -> None:
        self.calls.append(("cancel_forwarded", ([c.task_id for c in cancels], home_node_id)))

    def forward_logs(self, lines: node_pb2.LogLines) -> None:
        self.calls.append(("forward_logs", list(lines.lines)))

    async def object_chunks(self, oid: bytes, puller: bytes) -> AsyncIterator[node_pb2.ObjectChunk]:
        self.calls.append(("object_chunks", (oid, puller)))
        yield node_pb2.ObjectChunk(data=b"abc", total_size=3)

    def node_info(self) -> node_pb2.GetNodeInfoReply:
        self.calls.append(("node_info", None))
        return node_pb2.GetNodeInfoReply(address="here")

    def request_stop(self) -> None:
        self.calls.append(("request_stop", None))
        self.stop_requested.set()


def test_the_servicer_needs_only_the_named_calls_of_the_node() -> None:
    """Each RPC is one named call on the node (no manager, no state behind it)."""
    async def main() -> None:
        node = RecordingNode()
        servicer = NodeServicer()
        servicer.attach(node)
        server, port = await create_server(
            "127.0.0.1", 0, TOKEN, [(node_pb2_grpc.add_NodeManagerServicer_to_server, servicer)])
        channel = connect(f"127.0.0.1:{port}")
        session = SessionClient(f"127.0.0.1:{port}", "driver")
        try:
            stub = NodeManagerStub(channel)
            task_id = _ids.new_id()
            await stub.ForwardTask(node_pb2.ForwardTaskRequest(
                spec=common_pb2.TaskSpec(task_id=task_id, function_id=b"fn" * 10), home_address="127.0.0.1:1"),
                metadata=MD)
            await stub.ReportResults(node_pb2.ReportResultsRequest(task_id=task_id), metadata=MD)
            await stub.FreeObjects(node_pb2.FreeObjectsRequest(object_ids=[b"o1", b"o2"], node_id=b"n" * 16),
                                   metadata=MD)
            await stub.CancelTasks(node_pb2.CancelTasksRequest(
                tasks=[node_pb2.CancelTask(task_id=task_id, force=True)], home_node_id=b"h" * 16), metadata=MD)
            await stub.ForwardLogs(node_pb2.LogLines(lines=["printed"]), metadata=MD)
            assert (await stub.GetNodeInfo(node_pb2.GetNodeInfoRequest(), metadata=MD)).address == "here"
            chunks = [c async for c in stub.PullObject(node_pb2.PullObjectRequest(object_id=b"o1"),
                                                       metadata=MD)]
            assert [c.data for c in chunks] == [b"abc"]
            welcome = await session.open()
            assert welcome.node_id == b"\x05" * 16
            session.send(node_pb2.ClientOp(get=node_pb2.GetObjects(object_ids=[b"o1"])))
            await async_wait_for(lambda: ("handle", ["get"]) in node.calls, what="the batch to be handled")
            await stub.Shutdown(node_pb2.ShutdownRequest(), metadata=MD)
            await node.stop_requested.wait()
            await session.break_stream()
            await async_wait_for(lambda: ("disconnect", session.client_id) in node.calls,
                                 what="the Session's end to reach the node")
        finally:
            await session.close()
            await channel.close()
            await server.stop(None)
        assert [name for name, _ in node.calls] == [
            "accept_forwarded", "remote_result", "release_remote_holds", "cancel_forwarded",
            "forward_logs", "node_info", "object_chunks", "hello", "handle", "request_stop", "disconnect"]
        assert node.calls[2] == ("release_remote_holds", ([b"o1", b"o2"], b"n" * 16))
        assert node.calls[3] == ("cancel_forwarded", ([task_id], b"h" * 16))
        assert node.calls[4] == ("forward_logs", ["printed"])
    run(main())
