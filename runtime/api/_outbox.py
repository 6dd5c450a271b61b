"""The ops a client sends to its node, batched onto its one ``Session`` stream.

Callers on any thread never wait on the network to *send*: ``send`` appends an op and
wakes the writer once per batch; whatever accumulated while the previous batch was being
written goes out as the next batch. Reference changes coalesce into one ``RefUpdate`` op
at the tail of the queue, so they stay in order with the ops around them: a submit that
uses a ref always reaches the node before that ref's removal.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator

from runtime.protocol import node_pb2


class Outbox:
    """Thread-safe queue of ``ClientOp`` for the session's request stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._out: list[node_pb2.ClientOp] = []
        #: The RefUpdate op at the tail of ``_out``, if the tail is one.
        self._ref_op: node_pb2.ClientOp | None = None
        self._wake_pending = False
        self._wake: asyncio.Event | None = None
        self._closing = False

    def attach(self) -> None:
        """Create the wake-up event; call on the IO loop before ``batches``."""
        self._wake = asyncio.Event()

    def send(self, op: node_pb2.ClientOp) -> None:
        """Queue ``op`` for the next batch."""
        with self._lock:
            self._out.append(op)
            self._ref_op = None
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._loop.call_soon_threadsafe(self._wake_set)

    def add_ref(self, oid: bytes) -> None:
        """Announce a local reference to ``oid`` (its first one)."""
        with self._lock:
            self._ref_update().add.append(oid)

    def remove_ref(self, oid: bytes) -> None:
        """Announce that the last local reference to ``oid`` is gone."""
        with self._lock:
            self._ref_update().remove.append(oid)

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

    def close(self) -> None:
        """No more ops: ``batches`` sends what is queued, then ends the stream, so the node
        gets everything sent before a ``shutdown`` (a named actor's creation, say)."""
        with self._lock:
            self._closing = True
        self._loop.call_soon_threadsafe(self._wake_set)

    def _wake_set(self) -> None:
        assert self._wake is not None
        self._wake.set()

    async def batches(self, hello: node_pb2.ClientOp) -> AsyncGenerator[node_pb2.ClientBatch, None]:
        """The request stream: ``hello`` first, then one batch per wake-up."""
        yield node_pb2.ClientBatch(ops=[hello])
        wake = self._wake
        assert wake is not None, "attach() was not called"
        while True:
            await wake.wait()
            wake.clear()
            with self._lock:
                ops, self._out = self._out, []
                self._ref_op = None
                self._wake_pending = False
                closing = self._closing
            if ops:
                yield node_pb2.ClientBatch(ops=ops)
            if closing:
                return
