"""CoreClient: one process's connection to its node manager (a driver's or a worker's).

The client owns one background IO thread running an asyncio loop with one long-lived
``Session`` stream to the node. Calls from user threads never wait on the network to
*send*: they append an op to ``_out`` and wake the writer once per batch; whatever
accumulated while the previous batch was being written goes out as the next batch. The
reader applies incoming ops (objects, logs, tasks for a worker) and wakes waiters.

Objects: results of tasks this client submitted are pushed to it by the node (it owns
them); other objects are asked for with ``GetObjects``. Values are deserialized on every
``get`` (so callers cannot mutate each other's results); shared-memory objects are mapped
read-only, without a copy.

References: ``ObjectRef`` instances count themselves here. The first local ref to an
object this client did not create is announced (``add``), the last one dropped is too
(``remove``); both ride in ``RefUpdate`` ops placed in order among the other ops, so a
submit that uses a ref always reaches the node before that ref's removal.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import platform
import queue
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import cloudpickle
import grpc

from runtime import _ids
from runtime.exceptions import (
    ClientClosedError,
    ConnectionLostError,
    GetTimeoutError,
    ObjectStoreFullError,
    TaskError,
)
from runtime.gcs.client import GcsClient
from runtime.object_store.shm import read_object, write_object
from runtime.protocol import codec, common_pb2, node_pb2, node_pb2_grpc
from runtime.rpc.channel import connect, token_metadata

logger = logging.getLogger(__name__)

#: The tasks running in this thread or coroutine, innermost last (empty in a driver).
_running: contextvars.ContextVar[tuple[common_pb2.TaskSpec, ...]] = contextvars.ContextVar(
    "cellray_running_tasks", default=())

T = TypeVar("T")
LogHandler = Callable[[node_pb2.LogLines], None]


class CoreClient:
    """The connection of one driver or worker process to its node. Thread-safe."""

    def __init__(self, *, node_address: str, gcs_address: str, token: str, kind: str,
                 job_id: bytes, worker_id: bytes = b"") -> None:
        self.node_address = node_address
        self.gcs_address = gcs_address
        self.token = token
        self.kind = kind
        self.job_id = job_id
        self.worker_id = worker_id
        self.client_id = _ids.new_id()
        self.node_id = b""
        self.shm_dir = ""
        self.store_capacity = 0
        self.inline_threshold = 100 * 1024
        self.session_dir = ""
        self._md = token_metadata(token)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._out: list[node_pb2.ClientOp] = []
        self._ref_op: node_pb2.ClientOp | None = None
        self._wake_pending = False
        #: Ready objects known here: id -> ObjectData (inline bytes or a shm path).
        self._objects: dict[bytes, common_pb2.ObjectData] = {}
        #: Objects asked for and not yet received.
        self._requested: set[bytes] = set()
        #: Local ObjectRef counts.
        self._local_refs: dict[bytes, int] = {}
        self._exported: set[bytes] = set()
        self.log_handlers: list[LogHandler] = []
        self.event_handlers: list[Callable[[common_pb2.TaskEvent], None]] = []
        #: Tasks the node gave this worker (read by the worker's main thread).
        self.tasks: queue.SimpleQueue[node_pb2.NodeOp] = queue.SimpleQueue()
        self.cancel_handler: Callable[[node_pb2.CancelTask], None] | None = None
        #: Called at each submission from a driver; its string tags the task tree (a cell).
        self.origin_provider: Callable[[], str] | None = None
        #: True once this worker became an actor's process (no nested tasks run inside it).
        self.is_actor = False
        self.closed = False
        self._broken: BaseException | None = None
        self._warned_infeasible: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="cellray-io", daemon=True)
        self._wake: asyncio.Event | None = None
        self.gcs: GcsClient | None = None

    @property
    def task_stack(self) -> tuple[common_pb2.TaskSpec, ...]:
        """The tasks running in the calling thread or coroutine, innermost last."""
        return _running.get()

    def push_task(self, spec: common_pb2.TaskSpec) -> contextvars.Token[tuple[common_pb2.TaskSpec, ...]]:
        return _running.set(_running.get() + (spec,))

    def pop_task(self, token: contextvars.Token[tuple[common_pb2.TaskSpec, ...]]) -> None:
        _running.reset(token)

    # ---- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Connect to the node and wait for its Welcome."""
        self.start_loop()
        self.run(self._connect(), timeout)

    def start_loop(self) -> None:
        """Start the IO thread (``run`` works from then on; ``_connect`` opens the session)."""
        self._thread.start()
        self.run(self._init_loop_state(), 10.0)

    async def _init_loop_state(self) -> None:
        self._wake = asyncio.Event()
        self.gcs = GcsClient(self.gcs_address, self.token)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the IO loop and wait for its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("this call blocks on the cluster and cannot run inside an output, "
                               "event or log handler (they run on cellray's IO thread); hand the "
                               "work to another thread instead")
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    async def _connect(self) -> None:
        self._channel = connect(self.node_address)
        rpc = node_pb2_grpc.NodeManagerStub(self._channel)
        hello = node_pb2.ClientOp()
        h = hello.hello
        h.kind, h.client_id, h.worker_id, h.pid, h.job_id = (
            self.kind, self.client_id, self.worker_id, os.getpid(), self.job_id)
        h.python_version = platform.python_version()
        h.cloudpickle_version = cloudpickle.__version__
        self._call = rpc.Session(self._requests(hello), metadata=self._md)
        try:
            first = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise _translate(e, self.node_address) from None
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
            try:
                self.run(_close(), 5.0)
            except Exception as e:  # the loop may be wedged by a dead peer
                logger.debug("error closing client: %s", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
            if not self._thread.is_alive():
                self._loop.close()
        with self._cv:
            self._cv.notify_all()

    def _check(self) -> None:
        if self.closed:
            raise ClientClosedError("This cluster connection was shut down. Call runtime.init() again.")
        if self._broken is not None:
            raise ConnectionLostError(
                f"Lost the connection to the node manager at {self.node_address}: "
                f"{self._broken}. The cluster may have stopped; see the logs in "
                f"{self.session_dir or 'the session directory'}/logs.") from self._broken

    # ---- sending -------------------------------------------------------------------

    def send(self, op: node_pb2.ClientOp) -> None:
        """Queue ``op`` for the next batch."""
        with self._lock:
            self._out.append(op)
            self._ref_op = None
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._loop.call_soon_threadsafe(self._wake_set)

    def _wake_set(self) -> None:
        assert self._wake is not None
        self._wake.set()

    async def _requests(self, hello: node_pb2.ClientOp) -> Any:
        yield node_pb2.ClientBatch(ops=[hello])
        wake = self._wake
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            with self._lock:
                ops, self._out = self._out, []
                self._ref_op = None
                self._wake_pending = False
            if ops:
                yield node_pb2.ClientBatch(ops=ops)

    def _ref_update(self) -> node_pb2.RefUpdate:
        # Called with the lock held: the RefUpdate op at the tail of the queue.
        op = self._ref_op
        if op is None:
            op = self._ref_op = node_pb2.ClientOp()
            self._out.append(op)
            if not self._wake_pending:
                self._wake_pending = True
                self._loop.call_soon_threadsafe(self._wake_set)
        return op.refs

    # ---- receiving -----------------------------------------------------------------

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
                self._broken = _translate(e, self.node_address)
        except Exception as e:  # pragma: no cover - a bug in _apply
            logger.exception("session reader failed")
            self._broken = e
        else:
            if not self.closed:
                self._broken = ConnectionLostError(f"the node manager at {self.node_address} closed the session")
        finally:
            with self._cv:
                self._cv.notify_all()
            if self._broken is not None and self.kind == "worker":
                os._exit(1)  # a worker without its node has nothing to do

    def _apply(self, batch: node_pb2.NodeBatch) -> None:
        notify = False
        for op in batch.ops:
            kind = op.WhichOneof("op")
            if kind == "object":
                d = op.object
                oid = d.object_id
                if oid in self._local_refs:
                    self._objects[oid] = d
                self._requested.discard(oid)
                notify = True
            elif kind == "object_error":
                e = op.object_error
                self._objects[e.object_id] = common_pb2.ObjectData(
                    object_id=e.object_id, inline=e.error, size=len(e.error))
                self._requested.discard(e.object_id)
                notify = True
            elif kind == "execute":
                self.tasks.put(op)
                notify = True
            elif kind == "log":
                for handler in self.log_handlers:
                    try:
                        handler(op.log)
                    except Exception:
                        logger.exception("log handler failed")
            elif kind == "event":
                self._on_event(op.event)
            elif kind == "cancel":
                if self.cancel_handler is not None:
                    self.cancel_handler(op.cancel)
        if notify:
            with self._cv:
                self._cv.notify_all()

    def _on_event(self, ev: common_pb2.TaskEvent) -> None:
        if ev.state == "INFEASIBLE" and ev.detail not in self._warned_infeasible:
            self._warned_infeasible.add(ev.detail)
            print(f"Warning: {ev.detail}", file=sys.stderr)
        for handler in self.event_handlers:
            try:
                handler(ev)
            except Exception:
                logger.exception("event handler failed")

    # ---- references ----------------------------------------------------------------

    def incref(self, oid: bytes, announce: bool) -> None:
        """A new local ObjectRef; ``announce`` when the node does not already count us."""
        with self._lock:
            n = self._local_refs.get(oid, 0)
            self._local_refs[oid] = n + 1
            if n == 0 and announce:
                self._ref_update().add.append(oid)

    def decref(self, oid: bytes) -> None:
        if self.closed:
            return
        with self._lock:
            n = self._local_refs.get(oid, 0) - 1
            if n > 0:
                self._local_refs[oid] = n
                return
            self._local_refs.pop(oid, None)
            self._objects.pop(oid, None)
            self._ref_update().remove.append(oid)

    # ---- objects -------------------------------------------------------------------

    def put_serialized(self, oid: bytes, s: codec.Serialized) -> None:
        """Store a serialized value under ``oid`` (a new put) and tell the node."""
        self._check()
        data = common_pb2.ObjectData(object_id=oid, size=s.nbytes, node_id=self.node_id)
        data.nested_refs.extend(s.contained_refs)
        if s.nbytes > self.inline_threshold:
            if s.nbytes > self.store_capacity:
                raise ObjectStoreFullError(
                    f"Cannot put an object of {s.nbytes / 2**20:.1f} MiB: the object store of "
                    f"node {_ids.short(self.node_id)} holds at most {self.store_capacity / 2**20:.1f} "
                    "MiB. Start the cluster with a larger object_store_memory, or split the "
                    "object into smaller pieces.")
            path = os.path.join(self.shm_dir, oid.hex())
            write_object(path, s)
            data.shm_path = path
        else:
            data.inline = s.to_bytes()
        op = node_pb2.ClientOp()
        op.put.CopyFrom(data)
        with self._lock:
            self._objects[oid] = data
        self.send(op)

    def wait_ids(self, ids: Sequence[bytes], num_ready: int, timeout: float | None) -> list[bytes]:
        """Wait until ``num_ready`` of ``ids`` are here (or ``timeout``); return the ready ones."""
        self._check()
        objects = self._objects
        unique = list(dict.fromkeys(ids))
        # Only the ids still missing are looked at again on each wake-up.
        missing = [i for i in unique if i not in objects]
        need = min(num_ready, len(unique))
        if len(unique) - len(missing) >= need:
            return [i for i in ids if i in objects]
        self._request(missing)
        deadline = None if timeout is None else time.monotonic() + timeout
        blocked = False
        try:
            with self._cv:
                while True:
                    missing = [i for i in missing if i not in objects]
                    if len(unique) - len(missing) >= need:
                        return [i for i in ids if i in objects]
                    self._check()
                    # Blocking lends this worker's CPU and lets the node run awaited tasks
                    # on its stack, where no deadline can interrupt them: only without one.
                    if self.kind == "worker" and not self.is_actor and deadline is None:
                        if not blocked:
                            blocked = True
                            self._cv.release()
                            try:
                                self._set_blocked(True, missing)
                            finally:
                                self._cv.acquire()
                        if not self.tasks.empty():
                            self._cv.release()
                            try:
                                self._run_nested()
                            finally:
                                self._cv.acquire()
                            continue
                    if deadline is None:
                        self._cv.wait()
                    else:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return [i for i in ids if i in objects]
                        self._cv.wait(left)
        finally:
            if blocked:
                self._set_blocked(False, [])

    def _request(self, ids: list[bytes]) -> None:
        ask = [i for i in ids if i not in self._requested]
        if not ask:
            return
        self._requested.update(ask)
        op = node_pb2.ClientOp()
        op.get.object_ids.extend(ask)
        self.send(op)

    def _set_blocked(self, blocked: bool, waiting_on: list[bytes]) -> None:
        stack = self.task_stack
        if not stack:
            return
        op = node_pb2.ClientOp()
        op.blocked.blocked = blocked
        op.blocked.task_id = stack[-1].task_id
        op.blocked.waiting_on.extend(waiting_on)
        self.send(op)

    def _run_nested(self) -> None:
        from runtime.worker.executor import run_one  # the worker's executor (worker mode only)
        try:
            op = self.tasks.get_nowait()
        except queue.Empty:
            return
        run_one(self, op.execute)

    def get_values(self, ids: Sequence[bytes], timeout: float | None) -> list[Any]:
        """The values of ``ids`` in order; raises the stored error of a failed task."""
        ready = self.wait_ids(ids, len(ids), timeout)
        if len(ready) < len(ids):
            missing = len(ids) - len(ready)
            raise GetTimeoutError(
                f"get() timed out after {timeout} s: {missing} of {len(ids)} object(s) not ready "
                "yet. Use a larger timeout, or rt.wait() to collect results as they finish.")
        return [self.value(i) for i in ids]

    def value(self, oid: bytes) -> Any:
        data = self._objects.get(oid)
        if data is None:  # freed meanwhile by another thread dropping its ref: ask again
            self.wait_ids([oid], 1, None)
            data = self._objects[oid]
        if data.shm_path:
            try:
                return read_object(data.shm_path)
            except FileNotFoundError:
                # Spilled or moved since we learned the path: ask the node for it again.
                with self._lock:
                    self._objects.pop(oid, None)
                self._requested.discard(oid)
                self.wait_ids([oid], 1, None)
                return read_object(self._objects[oid].shm_path)
        blob = data.inline
        if codec.is_error(blob):
            err = codec.deserialize(blob)
            if isinstance(err, TaskError):
                raise err.as_instanceof_cause()
            raise err
        return codec.deserialize(blob)

    # ---- functions -----------------------------------------------------------------

    def export_function(self, function_id: bytes, name: str, pickled: bytes) -> None:
        """Export a function or class to the GCS once per client (content-addressed)."""
        if function_id in self._exported:
            return
        from runtime.protocol import gcs_pb2
        row = gcs_pb2.FunctionRow(function_id=function_id, name=name, pickled=pickled,
                                  job_id=self.job_id)
        assert self.gcs is not None
        self.run(self.gcs.export_function(row), 60.0)
        self._exported.add(function_id)

    def stamp(self, spec: common_pb2.TaskSpec) -> None:
        """Fill where a new task comes from: parent task, root driver, origin tag."""
        stack = self.task_stack
        if stack:
            parent = stack[-1]
            spec.parent_task_id = parent.task_id
            spec.driver_id = parent.driver_id
            spec.driver_address = parent.driver_address
            spec.origin = parent.origin
        else:
            spec.driver_id = self.client_id
            spec.driver_address = self.node_address
            provider = self.origin_provider
            if provider is not None:
                try:
                    spec.origin = provider()
                except Exception:
                    logger.exception("origin provider failed")

    def submit(self, op: node_pb2.ClientOp) -> None:
        """Send a task; its results will be pushed here (this client owns them)."""
        self._check()
        spec = op.submit
        if spec.num_returns:
            tid = spec.task_id
            self._requested.update(_ids.object_id(tid, i) for i in range(1, spec.num_returns + 1))
        self.send(op)

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        self._check()
        op = node_pb2.ClientOp()
        c = op.cancel
        c.task_id, c.force, c.recursive = task_id, force, recursive
        self.send(op)


def _translate(e: grpc.aio.AioRpcError, address: str) -> BaseException:
    code = e.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return PermissionError(f"The node manager at {address} refused this client: {e.details()}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return RuntimeError(f"The node manager at {address} refused this client: {e.details()}")
    return ConnectionLostError(f"Lost the node manager at {address} ({code.name}: {e.details()}). "
                               "Is the cluster still running?")
