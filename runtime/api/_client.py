"""CoreClient: a driver's connection to its node manager.

The client owns one background IO thread running an asyncio loop with one long-lived
``Session`` stream to the node. Calls from user threads never wait on the network to
*send*: ops go through the :class:`~runtime.api._outbox.Outbox`, batched. The reader
applies incoming ops (objects, logs, events) and wakes waiters.

Objects (:class:`~runtime.api._objects.ObjectTable`): values are deserialized on every
``get`` (so callers cannot mutate each other's results); shared-memory objects are
mapped read-only, without a copy.

What a worker process does differently (run the tasks it is sent, nested ones while a
task waits, lend its CPU, cancel, GPU ids, exit when its node goes) sits behind the
:class:`~runtime.api._host.Host` it installs with ``install_host``; a driver keeps the
default :class:`~runtime.api._host.DriverHost`.
Through a GCS outage the session goes on; what needs the GCS waits for it (``_gcs_link``).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import cloudpickle
import grpc

from runtime import _ids, config
from runtime.api import _stamp
from runtime.api._gcs_link import Exports, connect_gcs, recheck_cluster, timed_out
from runtime.api._host import DriverHost, Host
from runtime.api._objects import ObjectTable, check_sendable, decode
from runtime.api._outbox import Outbox
from runtime.api._task_events import TaskEvents
from runtime.exceptions import (
    BlockingCallError,
    ClientClosedError,
    ConnectionLostError,
    GetTimeoutError,
    InternalError,
    ObjectStoreFullError,
)
from runtime.gcs.client import GcsClient
from runtime.object_store.pool import POOL_MIN
from runtime.object_store.shm import read_object, write_object
from runtime.protocol import codec, common_pb2, gcs_pb2, node_pb2, node_pb2_grpc
from runtime.rpc.channel import connect, token_metadata
from runtime.rpc.errors import translate

logger = logging.getLogger(__name__)

#: The tasks running in this thread or coroutine, innermost last (empty in a driver).
_running: contextvars.ContextVar[tuple[common_pb2.TaskSpec, ...]] = contextvars.ContextVar(
    "cellray_running_tasks", default=())
#: The generated NodeManager client class (generated gRPC code carries no type hints).
_NodeManagerStub: Any = node_pb2_grpc.NodeManagerStub
_SERVER = "node manager"
#: Waiting for the node to acknowledge a put never lends the CPU: the node answers at once.
_ACK_HOST = DriverHost()

T = TypeVar("T")
LogHandler = Callable[[node_pb2.LogLines], None]
#: What the session's reader does with one kind of ``NodeOp``; True when waiters should wake.
OpHandler = Callable[[node_pb2.NodeOp], bool]


class CoreClient:
    """The connection of one process to its node. Thread-safe."""

    def __init__(self, *, node_address: str, gcs_address: str, token: str, job_id: bytes,
                 settings: config.Settings | None = None) -> None:
        #: The tuning this process runs with (read once by ``init`` or the worker's entry).
        self.settings = settings or config.Settings()
        self.node_address = node_address
        self.gcs_address = gcs_address
        self.token = token
        self.job_id = job_id
        #: The job's namespace (a driver's, from ``init``); workers take their task's.
        self.namespace = ""
        self.client_id = _ids.new_id()
        self.node_id = b""
        self.shm_dir = ""
        #: On another machine than its node: objects travel inline (``node.sessions.Conn``).
        self.remote = False
        self.store_capacity = 0
        #: Until the node's Welcome says otherwise.
        self.inline_threshold = self.settings.inline_threshold
        self.session_dir = ""
        #: What this process does beyond a driver's (see ``install_host``).
        self.host: Host = DriverHost()
        self._md = token_metadata(token)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="cellray-io", daemon=True)
        self._outbox = Outbox(self._loop)
        self.objects = ObjectTable(self._outbox)
        self._exported = Exports()
        self.log_handlers: list[LogHandler] = []
        self.event_handlers: list[Callable[[common_pb2.TaskEvent], None]] = []
        #: Called at each submission from a driver; its string tags the task tree (a cell).
        self.origin_provider: Callable[[], str] | None = None
        #: Called with each task's spec and result refs as a driver submits it (not from
        #: inside tasks): ``runtime.state.add_submit_handler`` installs them.
        self.submit_handlers: list[Callable[[common_pb2.TaskSpec, list[Any]], None]] = []
        self.closed = False
        self._broken: BaseException | None = None
        #: Warnings about its tasks, and its actors' constructors that returned.
        self.task_events = TaskEvents()
        self.gcs: GcsClient | None = None
        #: The reader's dispatch table: one handler per kind of ``NodeOp`` (others are ignored).
        self._on_op: dict[str, OpHandler] = {
            "object": self._on_object, "object_error": self._on_object_error,
            "execute": self._on_execute, "log": self._on_log, "event": self._on_event_op,
            "cancel": self._on_cancel,
        }

    def install_host(self, host: Host) -> None:
        """Replace the driver's host (a worker installs its own) before ``start``."""
        if self._thread.is_alive():
            raise InternalError("install_host() after the client started")
        self.host = host

    @property
    def task_stack(self) -> tuple[common_pb2.TaskSpec, ...]:
        """The tasks running in the calling thread or coroutine, innermost last."""
        return _running.get()

    def push_task(self, spec: common_pb2.TaskSpec) -> contextvars.Token[tuple[common_pb2.TaskSpec, ...]]:
        return _running.set((*_running.get(), spec))

    def pop_task(self, token: contextvars.Token[tuple[common_pb2.TaskSpec, ...]]) -> None:
        _running.reset(token)

    # ---- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Connect to the node and wait for its Welcome (``timeout``: ``settings.rpc_timeout_s``)."""
        self.start_loop()
        self.run(self.open_session(), self.settings.rpc_timeout_s if timeout is None else timeout)

    def start_loop(self) -> None:
        """Start the IO thread (``run`` works from then on; ``open_session`` connects)."""
        self._thread.start()
        self.run(self._init_loop_state(), self.settings.rpc_timeout_s)

    async def _init_loop_state(self) -> None:
        self._outbox.attach()
        self.gcs = connect_gcs(self.gcs_address, self.token, self.settings,
                               driver=self.host.kind == "driver", on_new_cluster=self._cluster_gone)

    def _cluster_gone(self, err: ConnectionLostError) -> None:
        """The GCS came back as another cluster (``err`` says so): this connection is over."""
        self._broken = self._broken if self.closed else err
        self.objects.wake()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the IO loop and wait for its result.

        After ``timeout`` seconds the coroutine is cancelled and ``RpcTimeoutError`` (a
        ``TimeoutError``) raised; a ``TimeoutError`` the coroutine raised itself passes.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise BlockingCallError(
                "this call blocks on the cluster and cannot run inside an output, event or log "
                "handler (they run on cellray's IO thread); hand the work to another thread instead")
        what = getattr(coro, "__qualname__", "a call to the cluster")
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            if not fut.cancel():  # it finished meanwhile, or raised a TimeoutError of its own
                return fut.result(0)
            raise timed_out(what, timeout or 0.0, self.gcs, self.node_address or self.gcs_address,
                            self.session_dir) from None

    async def open_session(self) -> None:
        """Open the Session stream to ``node_address`` and read the node's Welcome."""
        self._channel = connect(self.node_address)
        rpc = _NodeManagerStub(self._channel)
        hello = node_pb2.ClientOp()
        h = hello.hello
        h.kind, h.client_id, h.worker_id, h.pid, h.job_id = (
            self.host.kind, self.client_id, self.host.worker_id, os.getpid(), self.job_id)
        h.python_version = platform.python_version()
        h.cloudpickle_version = cloudpickle.__version__
        h.remote = self.remote
        self._call = rpc.Session(self._outbox.batches(hello), metadata=self._md)
        try:
            first = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise translate(e, _SERVER, self.node_address) from None
        w = first.ops[0].welcome
        self.node_id, self.shm_dir, self.store_capacity = w.node_id, w.shm_dir, w.store_capacity
        self.inline_threshold, self.session_dir = w.inline_threshold, w.session_dir
        self._reader = self._loop.create_task(self._read())

    def close(self) -> None:
        """Close the stream and stop the IO thread. Safe to call twice."""
        if self.closed:
            return
        self.closed = True

        async def _close() -> None:
            if hasattr(self, "_call"):
                # What is queued goes first; the node then ends the stream (the reader sees
                # its end). A node that does not answer in time is cut off.
                self._outbox.close()
                reader = getattr(self, "_reader", None)
                if reader is not None:
                    try:
                        await asyncio.wait_for(asyncio.shield(reader), self.settings.close_timeout_s / 2)
                    except Exception:  # noqa: BLE001 - timed out or broken: cut it off below
                        pass
                self._call.cancel()
                await self._channel.close()
            if self.gcs is not None:
                await self.gcs.close()
            # As asyncio.run ends: cancel whatever else runs here (state subscriptions, ...).
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            await self._loop.shutdown_asyncgens()

        if self._thread.is_alive():
            grace = self.settings.close_timeout_s
            try:
                self.run(_close(), grace)
            except Exception as e:  # noqa: BLE001 - the loop may be wedged by a dead peer; close anyway
                logger.debug("error closing client: %s", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(grace)
            if not self._thread.is_alive():
                self._loop.close()
        self.objects.wake()

    def _check(self) -> None:
        if self.closed:
            raise ClientClosedError("This cluster connection was shut down. Call runtime.init() again.")
        if self._broken is not None:
            if getattr(self._broken, "cluster_restarted", False):
                raise copy.copy(self._broken)  # says it all; a fresh instance for each raise
            raise ConnectionLostError(
                f"Lost the connection to the node manager at {self.node_address}: "
                f"{self._broken}. The cluster may have stopped; see the logs in "
                f"{self.session_dir or 'the session directory'}/logs.") from self._broken

    # ---- the session stream ----------------------------------------------------------

    def send(self, op: node_pb2.ClientOp) -> None:
        """Queue ``op`` for the next batch."""
        self._outbox.send(op)

    async def _read(self) -> None:
        try:
            call = self._call
            while True:
                batch = await call.read()
                if batch is grpc.aio.EOF:
                    break
                self._apply(batch)
        except asyncio.CancelledError:
            pass
        except grpc.aio.AioRpcError as e:
            if not self.closed:
                self._broken = translate(e, _SERVER, self.node_address)
        except Exception as e:  # a bug in _apply: end the session, keep its cause
            logger.exception("session reader failed")
            self._broken = e
        else:
            if not self.closed:
                self._broken = ConnectionLostError(
                    f"the node manager at {self.node_address} closed the session",
                    address=self.node_address)
        finally:
            if self._broken is not None and self.host.kind == "driver" and self.gcs is not None:
                await recheck_cluster(self.gcs, self.settings.probe_timeout_s)  # then _cluster_gone says
            self.objects.wake()
            if self._broken is not None:
                self.host.on_broken(self._broken)

    def _apply(self, batch: node_pb2.NodeBatch) -> None:
        notify = False
        on_op = self._on_op
        for op in batch.ops:
            handler = on_op.get(op.WhichOneof("op") or "")
            if handler is not None and handler(op):
                notify = True
        if notify:
            self.objects.wake()

    # One handler per kind of NodeOp (the table ``_on_op``); True wakes the waiters.

    def _on_object(self, op: node_pb2.NodeOp) -> bool:
        self.objects.arrived(op.object)
        return True

    def _on_object_error(self, op: node_pb2.NodeOp) -> bool:
        self.objects.failed(op.object_error.object_id, op.object_error.error)
        return True

    def _on_execute(self, op: node_pb2.NodeOp) -> bool:
        self.host.on_execute(op)
        return True

    def _on_log(self, op: node_pb2.NodeOp) -> bool:
        for handler in self.log_handlers:
            try:
                handler(op.log)
            except Exception:  # a user's handler must not end the session
                logger.exception("log handler failed")
        return False

    def _on_event_op(self, op: node_pb2.NodeOp) -> bool:
        self._on_event(op.event)
        return False

    def _on_cancel(self, op: node_pb2.NodeOp) -> bool:
        self.host.on_cancel(op.cancel)
        return False

    def _on_event(self, ev: common_pb2.TaskEvent) -> None:
        if not self.task_events.on_event(ev):  # not a warning: nothing for the handlers
            return
        for handler in self.event_handlers:
            try:
                handler(ev)
            except Exception:  # a user's handler must not end the session
                logger.exception("event handler failed")

    # ---- references ----------------------------------------------------------------

    def incref(self, oid: bytes, announce: bool) -> None:
        """A new local ObjectRef; ``announce`` when the node does not already count us."""
        self.objects.incref(oid, announce)

    def decref(self, oid: bytes) -> None:
        if not self.closed:
            self.objects.decref(oid)

    # ---- objects -------------------------------------------------------------------

    def encode_object(self, data: common_pb2.ObjectData, oid: bytes, s: codec.Serialized,
                      too_big: str) -> None:
        """Fill ``data`` for ``s`` stored as ``oid``: inline when small, else written to this
        node's shared memory. ``too_big`` starts the error when it can never fit the store
        (the object's size and the store's follow, with what to do)."""
        data.object_id = oid
        data.size = s.nbytes
        data.node_id = self.node_id
        if s.contained_refs:
            data.nested_refs.extend(s.contained_refs)
        if s.nbytes <= self.inline_threshold:
            data.inline = s.to_bytes()
            return
        if s.nbytes > self.store_capacity:
            raise ObjectStoreFullError(
                f"{too_big} is {s.nbytes / 2**20:.1f} MiB, more than the object store of node "
                f"{_ids.short(self.node_id)} holds ({self.store_capacity / 2**20:.1f} MiB). Start "
                "the cluster with a larger object_store_memory, or use smaller pieces.")
        if self.remote:  # the node writes it into its store as it arrives
            check_sendable(too_big, s.nbytes, self.settings.max_message_bytes)
            data.inline = s.to_bytes()
            return
        path = os.path.join(self.shm_dir, oid.hex())
        write_object(path, s)
        data.shm_path = path

    def put_serialized(self, oid: bytes, s: codec.Serialized) -> None:
        """Store a serialized value under ``oid`` (a new put) and tell the node.

        A value in shared memory is acknowledged: this returns once the node has sealed it
        (one round trip), so a put that returned is never lost, and raises the error the
        node refused it with (``ObjectStoreFullError``; ``ObjectSpillError`` when spilling
        older objects to disk failed). The caller holds an ObjectRef to ``oid``.
        """
        self._check()
        if s.nbytes > self.inline_threshold and threading.current_thread() is self._thread:
            raise BlockingCallError(
                "put() of a large value waits for the node and cannot run inside an output, "
                "event or log handler (they run on cellray's IO thread); hand the work to "
                "another thread instead")
        data = common_pb2.ObjectData()
        self.encode_object(data, oid, s, "Cannot put the object: it")
        op = node_pb2.ClientOp()
        op.put.CopyFrom(data)
        if not data.shm_path:
            self.objects.stored(data)
            self.send(op)
            return
        self.send(op)
        # Ask for it back: the node answers after sealing (the put goes first on the
        # session) with its path, or with the error it stored in its place.
        self.objects.wait([oid], 1, None, self._check, _ACK_HOST)
        ack = self.objects.data(oid)
        if ack is not None and ack.inline and codec.is_error(ack.inline):
            err = codec.deserialize(ack.inline)
            if isinstance(err, BaseException):
                raise err

    def wait_ids(self, ids: Sequence[bytes], num_ready: int, timeout: float | None) -> list[bytes]:
        """Wait until ``num_ready`` of ``ids`` are here (or ``timeout``); return the ready ones."""
        return self.objects.wait(ids, num_ready, timeout, self._check, self.host)

    def get_values(self, ids: Sequence[bytes], timeout: float | None) -> list[Any]:
        """The values of ``ids`` in order; raises the stored error of a failed task."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ready = self.objects.wait(ids, len(ids), timeout, self._check, self.host, fail_fast=True)
        failed = self.objects.failed_one(ready) if len(ready) < len(ids) else None
        if failed is not None:
            self.value(failed)  # raises the first error known, without waiting for the rest
        if len(ready) == len(ids) and self.objects.elsewhere(ids):
            # Ready on other nodes: wait again while this node pulls them.
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = self.objects.wait(ids, len(ids), left, self._check, self.host)
        if len(ready) < len(ids):
            missing = len(ids) - len(ready)
            raise GetTimeoutError(
                f"get() timed out after {timeout} s: {missing} of {len(ids)} object(s) not ready "
                "yet. Use a larger timeout, or rt.wait() to collect results as they finish.")
        return [self.value(i) for i in ids]

    def value(self, oid: bytes) -> Any:
        objects = self.objects
        data = objects.data(oid)
        if data is None or not (data.inline or data.shm_path):
            # Freed meanwhile by another thread dropping its ref, or ready on another node
            # only: ask again (the node pulls it here).
            objects.elsewhere([oid])
            self.wait_ids([oid], 1, None)
            data = objects.data(oid)
            assert data is not None
        if data.shm_path:
            try:
                return self._mapped(oid, data.size, read_object(data.shm_path))
            except FileNotFoundError:
                # Spilled or moved since we learned the path, or freed (its owner died): ask
                # the node for it again.
                objects.forget(oid)
                self.wait_ids([oid], 1, None)
                again = objects.data(oid)
                assert again is not None
                if again.shm_path:
                    return self._mapped(oid, again.size, read_object(again.shm_path))
                data = again
        return decode(oid, data.inline)

    def _mapped(self, oid: bytes, size: int, value: Any) -> Any:
        """``value``, read from the store: the node must never reuse a mapped file (``pool.py``)."""
        if size >= POOL_MIN and self.objects.first_mapping(oid):
            self.send(node_pb2.ClientOp(mapped=node_pb2.Mapped(object_ids=[oid])))
        return value

    # ---- functions and tasks -------------------------------------------------------

    def export_function(self, function_id: bytes, name: str, pickled: bytes) -> None:
        """Export a function or class to the GCS once per client (content-addressed)."""
        assert self.gcs is not None
        if not self._exported.needed(self.gcs, function_id):
            return
        row = gcs_pb2.FunctionRow(function_id=function_id, name=name, pickled=pickled,
                                  job_id=self.job_id)
        self.run(self.gcs.export_function(row),  # after waiting out a GCS outage, maybe
                 self.settings.function_timeout_s + self.settings.gcs_outage_timeout_s)
        self._exported.done(function_id)

    def stamp(self, spec: common_pb2.TaskSpec, strategy: Any = None) -> None:
        """Fill where a new task comes from (parent task, root driver, origin tag) and where
        it may run (``strategy``, checked already; a method call of an actor takes none)."""
        _stamp.stamp(spec, strategy, self.task_stack, self.client_id, self.node_address,
                     self.origin_provider)

    def submit(self, op: node_pb2.ClientOp) -> None:
        """Send a task; its results will be pushed here (this client owns them)."""
        self._check()
        spec = op.submit
        self.task_events.submitted(spec)
        if spec.num_returns:
            tid = spec.task_id
            self.objects.expect([_ids.object_id(tid, i) for i in range(1, spec.num_returns + 1)])
        self.send(op)

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        self._check()
        op = node_pb2.ClientOp()
        c = op.cancel
        c.task_id, c.force, c.recursive = task_id, force, recursive
        self.send(op)
