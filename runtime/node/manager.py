"""NodeManager: glues the pure local scheduler to its I/O (sessions, workers, store, GCS).

Every event (a client's ops, a worker's exit, an RPC from a peer, an answer to a call the
node made) is applied to the state, then the state's actions are drained and carried out
through the dispatch table (``dispatch.py``): ops are queued on the clients' sessions
(each session writes whatever accumulated as one batch), workers are started, stopped or
killed, GCS writes are batched on a short timer, and calls to peers are made in the
background. ``apply(fn)`` is that cycle, and the only way back into the state.

The gRPC servicer (``service.py``) reaches the manager through one named method per RPC
(``accept_forwarded``, ``remote_result``, ``release_remote_holds``, ``forward_logs``,
``object_chunks``, ``node_info``, ``prepare_bundles``, ``commit_bundles``,
``release_bundles``, ``request_stop``) and the Session calls (``hello``,
``handle``, ``disconnect``); the daemon reads ``statistics()``.

A node the GCS declared dead is *fenced* (``fence``, see ``runtime.gcs.fencing``): it
carries out nothing more, refuses every call, and stops; the daemon then starts a new
manager, under a new id, in the same process.

Through a GCS outage the node goes on: its tasks and actors run, its clients' tasks are
scheduled here (or spilled through the global schedulers, which survive the outage too),
and what it writes to the GCS waits in the reporter. Its GCS calls wait for the GCS to come
back (``runtime.gcs.client``); once it is back, the heartbeat loop tells it again what it
must know (``_resync``: the node's row if the GCS lost it, under the same id, the rows of
the actors living here, the objects held here). A GCS that came back as a new cluster (it
restarted without persistent storage) makes the node leave (``cluster_restarted``): it
stops, and its process exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil

from runtime import _ids, config
from runtime.exceptions import ConnectionLostError, InvalidRequestError, NodeDiedError, NotFoundError
from runtime.gcs.client import GcsClient
from runtime.node.actions import ObjectLocation
from runtime.node.dispatch import Outlets, carry_out
from runtime.node.gpus import Gpus
from runtime.node.memory_monitor import read_memory, rss_of
from runtime.node.peers import Peers
from runtime.node.reporting import GcsReporter
from runtime.node.sessions import Conn, Sessions, apply_ops, client_kind
from runtime.node.state import LocalScheduler
from runtime.node.worker_pool import Launcher, Pool, WorkerPool
from runtime.object_store.store import SharedMemoryStore
from runtime.protocol import codec, common_pb2, gcs_pb2, node_pb2
from runtime.rpc.channel import token_metadata

logger = logging.getLogger(__name__)


def _encode_error(err: BaseException) -> bytes:
    return codec.serialize(err, error=True).to_bytes()


def _settings(settings: config.Settings | None, **overrides: int | None) -> config.Settings:
    """``settings`` (default: from the environment) with the non-None keyword overrides."""
    base = settings if settings is not None else config.load()
    changes: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **changes).validate() if changes else base


class NodeManager:
    """Runs one node. Create, then ``await start()``; ``await stop()`` ends it.

    ``settings`` gives every tuning value (default: ``config.load()``); the keywords
    ``heartbeat_ms``, ``event_flush_ms`` and ``spill_threshold`` override it when given.
    ``pool`` replaces the pool of worker processes (tests inject fake workers); it must
    report exits through ``worker_exited``.
    """

    def __init__(self, *, node_id: bytes, address: str, gcs_address: str, token: str,
                 token_file: str, session_dir: Path, resources: dict[str, float],
                 store_capacity: int, heartbeat_ms: int | None = None,
                 event_flush_ms: int | None = None, gpus: Gpus | None = None,
                 spill_threshold: int | None = None, settings: config.Settings | None = None,
                 pool: Pool | None = None) -> None:
        settings = _settings(settings, heartbeat_ms=heartbeat_ms, event_flush_ms=event_flush_ms,
                             spill_threshold=spill_threshold)
        self.settings = settings
        self.node_id = node_id
        self.gpus = gpus
        self.address = address
        self.gcs_address = gcs_address
        self.session_dir = session_dir
        self.shm_dir = Path("/dev/shm") / f"cellray-{session_dir.name[-12:]}-{node_id.hex()[:8]}"
        self.store = SharedMemoryStore(self.shm_dir, session_dir / "spill" / node_id.hex()[:8],
                                       store_capacity, min(settings.store_pool_bytes, store_capacity))
        self.state = LocalScheduler(node_id, resources, self.store, _encode_error, settings=settings)
        self.gcs = GcsClient.from_settings(gcs_address, token, settings, wait_for_first_contact=True,
                                           on_new_cluster=self.cluster_restarted)
        self.sessions = Sessions()
        self.reporter = GcsReporter(self.gcs, node_id, address)
        self.peers = Peers(node_id=node_id, address=address, metadata=token_metadata(token),
                           settings=settings, gcs=self.gcs, path_for=self.store.path_for,
                           apply=self.apply, declared_dead=self.fence)
        if pool is None:
            pool = WorkerPool(node_address=address, gcs_address=gcs_address, token_file=token_file,
                              session_dir=session_dir, node_id=node_id, on_exit=self.worker_exited,
                              stop_grace_s=settings.worker_stop_grace_s, gcs=self.gcs)
        self.workers = Launcher(pool, self.state.worker_starting)
        self.outlets = Outlets(sessions=self.sessions, workers=self.workers, gcs=self.reporter,
                               peers=self.peers)
        self._tasks: list[asyncio.Task[Any]] = []
        self._beats: set[asyncio.Task[None]] = set()
        self.stopped = asyncio.Event()
        self.stop_requested = asyncio.Event()
        #: Why the GCS declared this node dead (it is fenced, see ``fence``), or None.
        self.fenced: str | None = None
        #: Why this node left its cluster (its GCS came back as a new one), or None.
        self.left: str | None = None
        #: ``gcs.link.connections`` when the GCS last heard everything from this node.
        self._told = 0

    # ---- lifecycle -----------------------------------------------------------------

    def _node_row(self) -> gcs_pb2.NodeRow:
        return gcs_pb2.NodeRow(node_id=self.node_id, address=self.address, alive=True,
                               pid=os.getpid(), hostname=socket.gethostname(), shm_dir=str(self.shm_dir),
                               start_time=time.time(), load=self.load())

    async def start(self, prestart_workers: int) -> None:
        await self.gcs.register_node(self._node_row())
        self._told = self.gcs.link.connections
        for _ in range(prestart_workers):
            self.workers.start_worker(counted=False)
        self.state.warm_workers = prestart_workers  # refilled when some of them die
        await self.peers.refresh_schedulers()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat_loop()),
                       loop.create_task(self._event_loop()),
                       loop.create_task(self.peers.watch_cluster())]
        if self.settings.memory_monitor_ms:
            self._tasks.append(loop.create_task(self._memory_loop()))

    def request_stop(self) -> None:
        """Ask the process to stop (from a signal handler or the Shutdown RPC)."""
        self.stop_requested.set()

    def fence(self, why: str) -> None:
        """The GCS declared this node dead (``why``): it is fenced, and stops.

        Its homes ran its tasks again elsewhere and its actors restart elsewhere, so nothing
        it holds counts any more: from now on the state's decisions are dropped instead of
        carried out, calls from peers are refused, and ``stop()`` ends the workers without
        reporting anything under the dead id. The daemon then rejoins the cluster as a new
        node (``runtime.node.__main__``). A stop already under way stays a stop.
        """
        if self.fenced is not None or self.stop_requested.is_set():
            return
        self.fenced = why
        logger.warning("node %s is fenced: %s. Its workers stop and what it held is dropped; this "
                       "process rejoins the cluster as a new node", _ids.short(self.node_id), why)
        self.stop_requested.set()

    def cluster_restarted(self, err: ConnectionLostError) -> None:
        """The GCS came back as a new cluster (``err`` says so): this node belongs to the old
        one, whose tasks, actors and objects are gone with its tables. It stops, reports
        nothing to the new cluster, and its process exits (one line in the log says why)."""
        if self.left is not None or self.fenced is not None or self.stop_requested.is_set():
            return
        self.left = str(err)
        logger.error("node %s leaves: its GCS at %s restarted without persistent storage and is now "
                     "another cluster (id %s); this node, its workers and what they held belonged "
                     "to the old one. Give the head durable storage (`--gcs-storage sqlite`) to keep "
                     "a cluster through GCS restarts", _ids.short(self.node_id), self.gcs_address,
                     str(getattr(err, "new_cluster_id", "?"))[:12])
        self.stop_requested.set()

    async def stop(self) -> None:
        quiet = self.fenced is not None or self.left is not None  # nothing to report, or nobody to
        self.stop_requested.set()  # a refused heartbeat from now on is the stop's, not a fence
        # A flush under way ends first (bounded): its calls are not cut off halfway.
        if not quiet and not await self.reporter.settle(self.settings.stop_grace_s):
            logger.info("a GCS report still under way after %.1fs is cut off; it is sent again "
                        "below", self.settings.stop_grace_s)
        for t in (*self._tasks, *self._beats):
            t.cancel()
        why = self.fenced or self.left
        self.sessions.close_all(None if why is None else (
            f"{why}; what this session had there (tasks, objects) is gone: call "
            "runtime.init() again to connect to a live node"))
        await self.workers.stop_all()
        self.gcs.link.waits = False  # a stop does not wait for a GCS that is away
        try:
            if not quiet:  # a fenced node reports nothing more under its dead id
                await asyncio.wait_for(self._last_report(), self.settings.close_timeout_s)
        # The head may already be gone; stopping goes on regardless.
        except Exception as e:  # noqa: BLE001
            logger.info("could not unregister from the GCS: %s", e)
        await self.gcs.close()
        await self.peers.close()
        self.store.close()
        self.stopped.set()

    async def _last_report(self) -> None:
        await self.reporter.flush()
        await self.gcs.unregister_node(self.node_id, "stopped")

    # ---- the event cycle -----------------------------------------------------------

    def flush(self) -> None:
        """Carry out every action the state has made, until it makes no more (a fenced node's
        actions are dropped)."""
        take = self.state.take_actions
        actions = take()
        while actions and self.fenced is None:
            carry_out(self.outlets, actions)
            actions = take()

    def apply(self, event: Callable[[LocalScheduler], None]) -> None:
        """Feed one event to the state, then carry out the actions it made."""
        event(self.state)
        self.flush()

    # ---- sessions ------------------------------------------------------------------

    def hello(self, conn: Conn, hello: node_pb2.Hello) -> node_pb2.NodeOp:
        """Register a Session; returns its Welcome (what it caused follows on the stream)."""
        kind = client_kind(hello.kind)
        if kind is None:  # the servicer lets no other Hello through
            raise InvalidRequestError(f"Hello names an unknown kind of client {hello.kind!r}")
        conn.client_id = hello.client_id
        if hello.remote:  # a driver on another machine (``sessions.Conn``)
            conn.make_remote(self.store, self.settings.inline_threshold)
        self.sessions.add(conn)
        self.state.connect(conn.client_id, kind, hello.pid, hello.worker_id)
        op = node_pb2.NodeOp()
        w = op.welcome
        w.node_id = self.node_id
        w.shm_dir = str(self.shm_dir)
        w.store_capacity = self.store.capacity
        w.inline_threshold = self.settings.inline_threshold
        w.session_dir = str(self.session_dir)
        w.gcs_address = self.gcs_address
        # The welcome goes first; decisions the new client caused (a worker that takes a
        # queued task) follow it on the same stream.
        self.flush()
        return op

    def handle(self, conn: Conn, batch: node_pb2.ClientBatch) -> None:
        apply_ops(self.state, conn.client_id, batch)
        self.flush()

    def disconnect(self, conn: Conn) -> None:
        """A Session ended (a worker's: the state has its process killed, see KillWorker)."""
        self.sessions.remove(conn)
        self.apply(lambda s: s.disconnect(conn.client_id))

    def worker_exited(self, worker_id: bytes, code: int | None) -> None:
        """The pool saw worker ``worker_id`` exit with ``code`` (None: unknown)."""
        self.apply(lambda s: s.worker_exited(worker_id, code))

    # ---- calls from peers (one per RPC of the servicer) ------------------------------

    def _refusal(self, sender: bytes) -> str:
        """Why a call of node ``sender`` (a task's home) is refused: this node or the sender
        was declared dead; "" when it is taken."""
        if self.fenced is not None:
            return f"node {_ids.short(self.node_id)} was declared dead and takes no work under its id"
        if sender in self.state.spill.dead_peers:
            return f"the task's home, node {_ids.short(sender)}, was declared dead"
        return ""

    def accept_forwarded(self, request: node_pb2.ForwardTaskRequest) -> str:
        """A peer placed one of its tasks here (``ForwardTask``): "" when taken, else why not."""
        why_not = self._refusal(request.home_node_id)
        if not why_not:
            self.apply(lambda s: s.accept_forwarded(request))
        return why_not

    def accept_calls(self, request: node_pb2.ForwardActorCallsRequest) -> bool:
        """Calls of an actor living here from callers on a peer (``ForwardActorCalls``):
        False when it does not live here (or this node is fenced)."""
        if self.fenced is not None:
            return False
        accepted = self.state.accept_calls(request)
        self.flush()
        return accepted

    def kill_hosted_actor(self, actor_id: bytes, no_restart: bool, graceful: bool = False) -> bool:
        """A peer asks to kill an actor living here (``KillHostedActor``): False when it does
        not. ``graceful``: it ends once the calls it has are done."""
        if self.fenced is not None:
            return False
        found = self.state.kill_hosted_actor(actor_id, no_restart, graceful)
        self.flush()
        return found

    def cancel_forwarded(self, cancels: list[node_pb2.CancelTask], home_node_id: bytes) -> None:
        """A peer cancels tasks it spilled here (``CancelTasks``)."""
        def cancel(s: LocalScheduler) -> None:
            for c in cancels:
                s.cancelling.cancel_forwarded(c.task_id, home_node_id, c.force, c.recursive)
        self.apply(cancel)

    def drop_pulled(self, objects: list[common_pb2.ObjectData], node_id: bytes) -> None:
        """Copies pulled from peer ``node_id`` must go (``DropObjects``): their owner died."""
        self.apply(lambda s: s.cancelling.drop_pulled(objects, node_id))

    def remote_results(self, requests: list[node_pb2.ReportResultsRequest]) -> None:
        """Many tasks of this node that ran on one peer finished (``ReportResultsBatch``)."""
        if self.fenced is not None:
            return  # their owners' sessions are closed
        state = self.state
        for request in requests:
            state.remote_result(request)
        self.flush()

    def remote_result(self, request: node_pb2.ReportResultsRequest) -> None:
        """A task of this node that ran elsewhere finished (``ReportResults``)."""
        if self.fenced is not None:
            return
        self.apply(lambda s: s.remote_result(request))

    def release_remote_holds(self, object_ids: list[bytes], node_id: bytes | None) -> None:
        """Peer ``node_id`` no longer needs the copies this node keeps for it (``FreeObjects``)."""
        self.apply(lambda s: s.release_remote_holds(object_ids, node_id))

    def forward_logs(self, lines: node_pb2.LogLines) -> None:
        """Lines printed elsewhere by tasks of a driver of this node (``ForwardLogs``)."""
        self.apply(lambda s: s.log(lines))

    # ---- placement-group bundles (PrepareBundles, CommitBundles, ReleaseBundles) ------

    def prepare_bundles(self, bundles: list[common_pb2.Bundle]) -> str:
        """Set bundles aside, all or none; "" when done, else why not."""
        why = self.state.bundles.prepare(bundles)
        self.flush()
        return why

    def commit_bundles(self, bundles: list[common_pb2.Bundle]) -> str:
        """Make prepared bundles usable; the GCS hears of their resources at once."""
        why = self.state.bundles.commit(bundles)
        self.flush()
        self._beat_now()
        return why

    def release_bundles(self, bundles: list[common_pb2.Bundle]) -> None:
        """Release bundles (what runs in them stops)."""
        self.apply(lambda s: s.bundles.release(bundles))
        self._beat_now()

    def _beat_now(self) -> None:
        """One heartbeat now, off the loop's schedule, so schedulers see a change of totals."""
        async def beat() -> None:
            try:
                await self.gcs.heartbeat(self.node_id, self.load())
            except NodeDiedError as e:
                self.fence(str(e))
            except Exception as e:  # noqa: BLE001 - the regular heartbeat follows anyway
                logger.info("an extra heartbeat failed: %s", e)
        task = asyncio.get_running_loop().create_task(beat())
        self._beats.add(task)
        task.add_done_callback(self._beats.discard)

    # ---- queries -------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """A snapshot of the local scheduler, for the node's log."""
        return self.state.statistics()

    def load(self) -> common_pb2.NodeLoad:
        load = self.state.load()
        load.store_used, load.store_capacity = self.store.used, self.store.capacity
        load.store_spilled, load.store_spilled_total = self.store.spilled_bytes, self.store.spilled_total
        vm = psutil.virtual_memory()
        load.memory_used = vm.total - vm.available
        load.memory_total = vm.total
        load.cpu_percent = psutil.cpu_percent(interval=None)
        if self.gpus is not None:
            load.gpus.extend(self.gpus.sample())
        return load

    def node_info(self) -> node_pb2.GetNodeInfoReply:
        reply = node_pb2.GetNodeInfoReply(node_id=self.node_id, address=self.address,
                                          session_dir=str(self.session_dir), pid=os.getpid())
        reply.load.CopyFrom(self.load())
        return reply

    async def object_chunks(self, oid: bytes, puller: bytes = b"") -> AsyncIterator[node_pb2.ObjectChunk]:
        """The bytes of object ``oid`` for peer ``puller`` (remembered: told if the object's
        owner dies), in chunks.

        Raises ``NotFoundError`` when this node does not hold it.
        """
        source = self.state.pull_source(oid)
        if source is not None and puller:
            self.state.objects.pulled(oid, puller)
        if source is None:
            raise NotFoundError(f"object {oid.hex()} is not held on node {_ids.short(self.node_id)}")
        if source.inline is not None:
            yield node_pb2.ObjectChunk(data=source.inline, total_size=len(source.inline),
                                       nested_refs=source.nested, inline=True)
            return
        path = self.store.locate(oid)
        self.store.pin(oid)
        chunk_bytes = self.settings.pull_chunk_bytes
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read(chunk_bytes)
                # The first chunk carries the size and nested refs, even when it is empty.
                yield node_pb2.ObjectChunk(data=data, total_size=source.size,
                                           nested_refs=source.nested)
                while data:
                    data = f.read(chunk_bytes)
                    if data:
                        yield node_pb2.ObjectChunk(data=data)
        finally:
            if self.state.pull_source(oid) is not None:
                self.store.unpin(oid)

    # ---- background loops ----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Beat every ``heartbeat_ms``; through a GCS outage a beat waits for the GCS (the
        client logs the outage), and the first beat after it tells the GCS everything again."""
        interval = self.settings.heartbeat_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            try:
                self.apply(lambda s: s.reap_idle())
                self.reporter.store_moves(self.store.take_moves())
                known = await self.gcs.heartbeat(self.node_id, self.load())
                await self.peers.refresh_schedulers()
                if not known or self.gcs.link.connections != self._told:
                    await self._resync(known)
                if orphans := await self.state.bundles.find_orphans(  # (bundles.py)
                        self.gcs.get_placement_group, self.node_id, self.settings.bundle_check_ms / 1000):
                    self.release_bundles(orphans)
            except NodeDiedError as e:  # declared dead: this id is over (see ``fence``)
                self.fence(str(e))
                return
            except ConnectionLostError as e:  # the GCS is away (or another cluster: we leave)
                if self.left is not None:
                    return
                logger.info("heartbeat to the GCS at %s failed: %s", self.gcs_address, e)
            # One failed beat must not end the loop: log, beat again.
            except Exception as e:  # noqa: BLE001
                logger.warning("heartbeat to the GCS at %s failed: %s", self.gcs_address, e)

    async def _resync(self, known: bool) -> None:
        """The GCS is back after losing the connection (it restarted, from its storage):
        tell it again what it must know, in case it lost the last writes before it died.

        Its row under the same id when it does not know this node (the tasks here keep
        their home), the rows of the actors living here, and the objects held in the store;
        task events and writes made during the outage wait in the reporter already.
        """
        told = self.gcs.link.connections
        if not known:
            logger.warning("the GCS at %s does not know this node (was it restarted without its "
                           "tables?); registering again as %s", self.gcs_address, _ids.short(self.node_id))
            await self.gcs.register_node(self._node_row())
        held = [(oid, obj.size) for oid, obj in self.state.objects.objects.items() if obj.in_store]
        for oid, size in held:
            self.reporter.object_location(ObjectLocation(oid, size, False))
        actors: list[int] = []
        self.apply(lambda s: actors.append(s.actors.resend_rows()))
        self._told = told
        logger.info("told the GCS at %s again about this node: %d actor row(s), %d object location(s)",
                    self.gcs_address, actors[0] if actors else 0, len(held))

    async def _event_loop(self) -> None:
        interval = self.settings.event_flush_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reporter.flush()
            # One failed batch must not end the loop: log, go on (an outage is the client's to log).
            except Exception as e:  # noqa: BLE001
                if self.left is not None:
                    return  # nothing goes to another cluster's GCS
                log = logger.info if isinstance(e, ConnectionLostError) else logger.warning
                log("reporting events to the GCS failed: %s", e)

    async def _memory_loop(self) -> None:
        """Read the machine's memory every ``memory_monitor_ms``: past the threshold the
        state kills one worker (``memory_monitor.py``)."""
        interval = self.settings.memory_monitor_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            try:
                self.state.memory.check(read_memory(), rss_of)
                self.flush()
            # One failed check must not end the monitor: log, check again.
            except Exception as e:  # noqa: BLE001
                logger.warning("the memory monitor's check failed: %s", e)
