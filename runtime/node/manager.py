"""NodeManager: glues the pure NodeState to its I/O (sessions, worker pool, store, GCS).

Every event from a session or the pool is applied to the state, then the state's outbox
is carried out: ops are queued on the clients' sessions (each session writes whatever
accumulated as one batch), workers are started or killed, and task events are batched to
the GCS on a short timer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil

from runtime import _ids, config
from runtime.gcs.client import GcsClient
from runtime.node import spill as sp
from runtime.node import state as st
from runtime.node.actors import ACTOR_ROW, KV_DELETE
from runtime.node.gpus import Gpus
from runtime.node.peers import Peers
from runtime.node.worker_pool import WorkerPool
from runtime.object_store.store import SharedMemoryStore
from runtime.protocol import codec, common_pb2, gcs_pb2, node_pb2
from runtime.rpc.channel import token_metadata

logger = logging.getLogger(__name__)


class Conn:
    """One Session stream: the ops waiting to be written as the next batch."""

    __slots__ = ("client_id", "closed", "kind", "out", "wake", "worker_id")

    def __init__(self) -> None:
        self.client_id = b""
        self.kind = ""
        self.worker_id = b""
        self.out: list[node_pb2.NodeOp] = []
        self.wake = asyncio.Event()
        self.closed = False

    def send(self, op: node_pb2.NodeOp) -> None:
        self.out.append(op)
        if len(self.out) == 1:
            self.wake.set()


#: Idle workers beyond one per CPU are stopped after this many seconds.
IDLE_WORKER_S = 10.0

_PEER_ACTIONS = frozenset({sp.SPILL, sp.PULL, sp.REPORT, sp.FREE_REMOTE, sp.FORWARD_LOG})


def _encode_error(err: BaseException) -> bytes:
    return codec.serialize(err, error=True).to_bytes()


class NodeManager:
    """Runs one node. Create, then ``await start()``; ``await stop()`` ends it."""

    def __init__(self, *, node_id: bytes, address: str, gcs_address: str, token: str,
                 token_file: str, session_dir: Path, resources: dict[str, float],
                 store_capacity: int, heartbeat_ms: int = 500, event_flush_ms: int = 100,
                 gpus: Gpus | None = None, spill_threshold: int = 0) -> None:
        self.node_id = node_id
        self.gpus = gpus
        self.address = address
        self.gcs_address = gcs_address
        self.token = token
        self.session_dir = session_dir
        self.heartbeat_s = heartbeat_ms / 1000.0
        self.event_flush_s = event_flush_ms / 1000.0
        shm_dir = Path("/dev/shm") / f"cellray-{session_dir.name[-12:]}-{node_id.hex()[:8]}"
        self.shm_dir = shm_dir
        self.store = SharedMemoryStore(shm_dir, session_dir / "spill" / node_id.hex()[:8],
                                       store_capacity)
        self.state = st.NodeState(node_id, resources, self.store, _encode_error,
                                  spill_threshold=spill_threshold)
        self.md = token_metadata(token)
        self.peers = Peers(self)
        self.pool = WorkerPool(node_address=address, gcs_address=gcs_address,
                               token_file=token_file, session_dir=session_dir, node_id=node_id,
                               on_exit=self._worker_exited)
        self.gcs = GcsClient(gcs_address, token)
        self.conns: dict[bytes, Conn] = {}
        self.events: list[common_pb2.TaskEvent] = []
        self.object_updates: list[gcs_pb2.ObjectLocationUpdate] = []
        #: Rows to write to the GCS (actor rows, released names), in order: every actor
        #: transition is published, however short-lived the state was.
        self.gcs_puts: list[tuple[str, bytes, bytes]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._pending_starts: set[asyncio.Task[Any]] = set()
        self.stopped = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self._proc = psutil.Process()

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self, prestart_workers: int) -> None:
        row = gcs_pb2.NodeRow(node_id=self.node_id, address=self.address, alive=True,
                              pid=os.getpid(), hostname=socket.gethostname(),
                              start_time=time.time(), load=self._load())
        await self.gcs.register_node(row)
        for _ in range(prestart_workers):
            self._start_worker()
        await self.peers.refresh_schedulers()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat_loop()),
                       loop.create_task(self._event_loop()),
                       loop.create_task(self.peers.watch_nodes())]

    def request_stop(self) -> None:
        """Ask the process to stop (from a signal handler or the Shutdown RPC)."""
        self.stop_requested.set()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for conn in self.conns.values():
            conn.closed = True
            conn.wake.set()
        await self.pool.stop_all()
        try:
            await self._flush_events()
            await self.gcs.unregister_node(self.node_id, "stopped")
        except Exception as e:  # the head may already be gone
            logger.info("could not unregister from the GCS: %s", e)
        await self.gcs.close()
        await self.peers.close()
        self.store.close()
        self.stopped.set()

    # ---- sessions ------------------------------------------------------------------

    def hello(self, conn: Conn, hello: node_pb2.Hello) -> node_pb2.NodeOp:
        conn.client_id, conn.kind, conn.worker_id = hello.client_id, hello.kind, hello.worker_id
        self.conns[conn.client_id] = conn
        self.state.connect(conn.client_id, hello.kind, hello.pid, hello.worker_id)
        op = node_pb2.NodeOp()
        w = op.welcome
        w.node_id = self.node_id
        w.shm_dir = str(self.shm_dir)
        w.store_capacity = self.store.capacity
        w.inline_threshold = config.INLINE_THRESHOLD
        w.session_dir = str(self.session_dir)
        w.gcs_address = self.gcs_address
        # The welcome goes first; decisions the new client caused (a worker that takes a
        # queued task) follow it on the same stream.
        self.flush()
        return op

    def handle(self, conn: Conn, batch: node_pb2.ClientBatch) -> None:
        s = self.state
        cid = conn.client_id
        for op in batch.ops:
            kind = op.WhichOneof("op")
            if kind == "submit":
                spec = op.submit
                if not spec.owner_id:
                    spec.owner_id = cid
                s.submit(cid, spec)
            elif kind == "result":
                s.result(cid, op.result)
            elif kind == "get":
                s.get(cid, op.get.object_ids)
            elif kind == "refs":
                s.update_refs(cid, op.refs.add, op.refs.remove)
            elif kind == "put":
                s.put(cid, op.put)
            elif kind == "log":
                s.log(op.log)
            elif kind == "blocked":
                s.blocked(cid, op.blocked)
            elif kind == "cancel":
                s.cancel(op.cancel.task_id, op.cancel.force, op.cancel.recursive)
            elif kind == "kill_actor":
                s.kill_actor(op.kill_actor.actor_id, op.kill_actor.no_restart)
            else:
                logger.warning("ignored op %r from client %s", kind, _ids.short(cid))
        self.flush()

    def disconnect(self, conn: Conn) -> None:
        if self.conns.get(conn.client_id) is conn:
            del self.conns[conn.client_id]
        self.state.disconnect(conn.client_id)
        if conn.kind == "worker":
            # The stream broke: make sure the process is gone; its exit reports the task.
            self.pool.kill(conn.worker_id)
        self.flush()

    # ---- carrying out the state's decisions ----------------------------------------

    def flush(self) -> None:
        outbox = self.state.outbox
        if not outbox:
            return
        self.state.outbox = []
        conns = self.conns
        for action in outbox:
            kind = action[0]
            if kind == st.SEND:
                conn = conns.get(action[1])
                if conn is not None:
                    conn.send(action[2])
            elif kind == st.EVENT:
                self.events.append(action[1])
            elif kind == st.OBJECT:
                self.object_updates.append(gcs_pb2.ObjectLocationUpdate(
                    object_id=action[1], node_id=self.node_id, size=action[2], removed=action[3]))
            elif kind in _PEER_ACTIONS:
                self.peers.carry_out(action)
            elif kind == st.START_WORKER:
                self._start_worker(counted=True)
            elif kind == st.KILL_WORKER:
                self.pool.kill(action[1])
            elif kind == ACTOR_ROW:
                action[1].node_address = self.address
                self.gcs_puts.append(("actors", action[1].actor_id, action[1].SerializeToString()))
            elif kind == KV_DELETE:
                self.gcs_puts.append(("kv", action[1], b""))
            elif kind == st.WARN:
                logger.warning("%s", action[1])

    def _start_worker(self, counted: bool = False) -> None:
        worker_id = _ids.new_id()
        self.state.worker_starting(worker_id, counted)
        t = asyncio.get_running_loop().create_task(self.pool.start(worker_id))
        self._pending_starts.add(t)
        t.add_done_callback(self._started)

    def _started(self, t: asyncio.Task[Any]) -> None:
        self._pending_starts.discard(t)
        if not t.cancelled() and t.exception() is not None:
            logger.error("could not start a worker: %s", t.exception())

    def _worker_exited(self, worker_id: bytes, code: int | None) -> None:
        self.state.worker_exited(worker_id, code)
        self.flush()

    # ---- background loops ----------------------------------------------------------

    def _load(self) -> common_pb2.NodeLoad:
        load = self.state.load()
        load.store_used = self.store.used
        load.store_capacity = self.store.capacity
        vm = psutil.virtual_memory()
        load.memory_used = vm.total - vm.available
        load.memory_total = vm.total
        load.cpu_percent = psutil.cpu_percent(interval=None)
        if self.gpus is not None:
            load.gpus.extend(self.gpus.sample())
        return load

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                for worker_id in self.state.reap_idle(IDLE_WORKER_S):
                    self.pool.stop(worker_id)
                known = await self.gcs.heartbeat(self.node_id, self._load())
                await self.peers.refresh_schedulers()
                if not known:
                    logger.warning("the GCS had marked this node dead; registering again")
                    await self.gcs.register_node(gcs_pb2.NodeRow(
                        node_id=self.node_id, address=self.address, alive=True, pid=os.getpid(),
                        hostname=socket.gethostname(), start_time=time.time(), load=self._load()))
            except Exception as e:
                logger.warning("heartbeat to the GCS at %s failed: %s", self.gcs_address, e)

    async def _flush_events(self) -> None:
        while self.gcs_puts:
            puts, self.gcs_puts = self.gcs_puts, []
            for table, key, value in puts:
                await self.gcs.put(table, key, value)
        if not self.events and not self.object_updates:
            return
        events, self.events = self.events, []
        objects, self.object_updates = self.object_updates, []
        await self.gcs.report_events(events, objects)

    async def _event_loop(self) -> None:
        while True:
            await asyncio.sleep(self.event_flush_s)
            try:
                await self._flush_events()
            except Exception as e:
                logger.warning("reporting events to the GCS failed: %s", e)
