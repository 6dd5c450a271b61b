"""The node's conversations with other processes of the cluster: peers and schedulers.

Carries out the multi-node actions of the state (spill through a global scheduler, pull
an object, report results home, free remote copies, forward printed lines) and keeps the
state's view of the other nodes current from the GCS "nodes" table.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import TYPE_CHECKING, Any

import grpc

from runtime import _ids
from runtime.node import spill as sp
from runtime.protocol import common_pb2, gcs_pb2, node_pb2, node_pb2_grpc, scheduler_pb2_grpc
from runtime.rpc.channel import connect

if TYPE_CHECKING:
    from runtime.node.manager import NodeManager

logger = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024


class Peers:
    """Channels to other nodes and to the global schedulers, and what goes over them."""

    def __init__(self, m: NodeManager) -> None:
        self.m = m
        self.addresses: dict[bytes, str] = {}
        self.schedulers: list[str] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._free: dict[bytes, list[bytes]] = {}

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = connect(address)
        return ch

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for ch in self._channels.values():
            await ch.close()

    # ---- actions -------------------------------------------------------------------

    def carry_out(self, action: tuple[Any, ...]) -> None:
        kind = action[0]
        if kind == sp.SPILL:
            self._spawn(self._spill(action[1], action[2]))
        elif kind == sp.PULL:
            self._spawn(self._pull(action[1], action[2]))
        elif kind == sp.REPORT:
            self._spawn(self._report(action[1], action[2]))
        elif kind == sp.FREE_REMOTE:
            first = action[1] not in self._free
            self._free.setdefault(action[1], []).append(action[2])
            if first:
                self._spawn(self._send_frees(action[1]))
        elif kind == sp.FORWARD_LOG:
            self._spawn(self._forward_log(action[1], action[2]))

    async def _spill(self, task_id: bytes, req: Any) -> None:
        req.home_address = self.m.address
        md = self.m.md
        while True:
            replicas = list(self.schedulers)
            random.shuffle(replicas)
            for address in replicas:
                rpc = scheduler_pb2_grpc.GlobalSchedulerStub(self.channel(address))
                try:
                    reply = await rpc.Schedule(req, metadata=md)
                except grpc.aio.AioRpcError as e:
                    logger.info("global scheduler %s failed for task %s (%s); trying another",
                                address, _ids.short(task_id), e.code().name)
                    continue
                self.m.state.spilled(task_id, reply.node_id, reply.scheduler, req.reason)
                self.m.flush()
                return
            if req.reason != sp.NEVER_FITS:
                self.m.state.spill_failed(task_id)
                self.m.flush()
                return
            # Only a scheduler can ever place it: wait for one to come back.
            await asyncio.sleep(self.m.heartbeat_s)

    async def _pull(self, oid: bytes, node_id: bytes) -> None:
        address = self.addresses.get(node_id)
        if address is None:
            self.m.state.pull_failed(oid, f"node {_ids.short(node_id)} is not known or not alive")
            self.m.flush()
            return
        path = self.m.store.path_for(oid)
        rpc = node_pb2_grpc.NodeManagerStub(self.channel(address))
        size, nested = 0, []
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            try:
                first = True
                async for chunk in rpc.PullObject(node_pb2.PullObjectRequest(object_id=oid),
                                                   metadata=self.m.md):
                    if first:
                        size, nested, first = chunk.total_size, list(chunk.nested_refs), False
                    view = memoryview(chunk.data)
                    while view:
                        view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        except (grpc.aio.AioRpcError, OSError) as e:
            try:
                os.unlink(path)
            except OSError:
                pass
            why = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            self.m.state.pull_failed(oid, why or type(e).__name__)
            self.m.flush()
            return
        data = common_pb2.ObjectData(object_id=oid, shm_path=path, size=size, node_id=self.m.node_id)
        data.nested_refs.extend(nested)
        self.m.state.pulled(data)
        self.m.flush()

    async def _report(self, address: str, req: node_pb2.ReportResultsRequest) -> None:
        req.node_address = self.m.address
        rpc = node_pb2_grpc.NodeManagerStub(self.channel(address))
        for attempt in range(5):
            try:
                await rpc.ReportResults(req, metadata=self.m.md, timeout=30)
                return
            except grpc.aio.AioRpcError as e:
                logger.warning("reporting task %s to its home %s failed (%s)",
                               _ids.short(req.task_id), address, e.code().name)
                await asyncio.sleep(0.1 * 2 ** attempt)

    async def _send_frees(self, node_id: bytes) -> None:
        await asyncio.sleep(0)  # let a burst of frees gather
        ids = self._free.pop(node_id, [])
        address = self.addresses.get(node_id)
        if not ids or address is None:
            return
        rpc = node_pb2_grpc.NodeManagerStub(self.channel(address))
        try:
            await rpc.FreeObjects(node_pb2.FreeObjectsRequest(object_ids=ids), metadata=self.m.md,
                                   timeout=30)
        except grpc.aio.AioRpcError as e:
            logger.info("freeing %d objects on node %s failed: %s", len(ids), address, e.code().name)

    async def _forward_log(self, address: str, lines: node_pb2.LogLines) -> None:
        rpc = node_pb2_grpc.NodeManagerStub(self.channel(address))
        try:
            await rpc.ForwardLogs(lines, metadata=self.m.md, timeout=30)
        except grpc.aio.AioRpcError as e:
            logger.info("forwarding output to %s failed: %s", address, e.code().name)

    # ---- keeping the view of the cluster current -------------------------------------

    async def watch_nodes(self) -> None:
        """Follow the GCS nodes table: peers joining, their totals, their deaths."""
        while True:
            try:
                async for msg in self.m.gcs.subscribe(["nodes"]):
                    if msg.table != "nodes" or not msg.value:
                        continue
                    self._node_row(gcs_pb2.NodeRow.FromString(msg.value))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.info("node table subscription ended (%s); subscribing again", e)
            await asyncio.sleep(self.m.heartbeat_s)

    def _node_row(self, row: gcs_pb2.NodeRow) -> None:
        state = self.m.state
        if row.node_id == self.m.node_id:
            return
        if row.alive:
            new = row.node_id not in state.peer_totals
            self.addresses[row.node_id] = row.address
            state.peer_totals[row.node_id] = dict(row.load.total)
            if new:
                state.retry_infeasible()
        elif row.node_id in self.addresses:
            self.addresses.pop(row.node_id, None)
            state.node_died(row.node_id)
        self.m.flush()

    async def refresh_schedulers(self) -> None:
        rows = await self.m.gcs.list_table("kv")
        found = sorted(v.decode() for k, v in rows if k.startswith(b"scheduler:") and v)
        had = self.m.state.has_schedulers
        self.schedulers = found
        self.m.state.has_schedulers = bool(found)
        if found and not had:
            self.m.state.retry_infeasible()
            self.m.flush()
