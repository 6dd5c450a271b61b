"""What the node writes to the GCS: task events, object locations, actor rows, names.

Task events and object locations are batched and sent on a short timer (one
``ReportEvents`` call per batch). Actor rows and released actor names are written in the
order the state made them, before the batch: every actor transition is published,
however short-lived the state was.

Nothing is lost when the GCS cannot be reached: a write leaves the reporter only once its
call succeeded. A failed (or cancelled) call leaves it, and everything made after it, in
place, so the next ``flush()`` sends them again, in the same order. Only a write the GCS
refuses as invalid (``InvalidRequestError``: it would be refused every time) is dropped,
with an error in the log. One flush runs at a time; ``settle()`` waits for the one under
way, so that a stopping node can let it end before cancelling the loop that runs it.

Through a GCS outage the writes wait here, in order, and go once the GCS is back (its
client waits for it; a flush that gives up leaves them for the next). Task events, which
only describe tasks, are capped at ``max_events``: past it the oldest are dropped, with one
warning per outage; object locations and actor writes are never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from runtime import _ids
from runtime.exceptions import InvalidRequestError
from runtime.node.actions import ObjectLocation, PutActor, ReleaseActorName, ReportEvent
from runtime.protocol import common_pb2, gcs_pb2

logger = logging.getLogger(__name__)


class GcsWriter(Protocol):
    """The GCS calls the reporter makes (``runtime.gcs.client.GcsClient`` has them)."""

    async def report_events(self, task_events: list[common_pb2.TaskEvent],
                            object_updates: list[gcs_pb2.ObjectLocationUpdate]) -> None: ...

    async def put_actor(self, row: gcs_pb2.ActorRow) -> None: ...

    async def release_actor_name(self, namespace: str, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Write:
    """One ordered GCS write waiting to be sent: what it is (for the log), and the call."""

    what: str
    send: Callable[[GcsWriter], Awaitable[None]]


class GcsReporter:
    """Collects the state's GCS actions; ``flush()`` sends what has accumulated."""

    def __init__(self, gcs: GcsWriter, node_id: bytes, node_address: str, *,
                 max_events: int = 100_000) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        self._gcs = gcs
        self._node_id = node_id
        self._node_address = node_address
        self._max_events = max_events
        #: Task events dropped since the last batch that went through (the GCS was away).
        self.dropped_events = 0
        self._events: list[common_pb2.TaskEvent] = []
        self._objects: list[gcs_pb2.ObjectLocationUpdate] = []
        self._writes: deque[_Write] = deque()
        self._lock = asyncio.Lock()

    # ---- outlets of the dispatch table ----

    def report_event(self, action: ReportEvent) -> None:
        events = self._events
        events.append(action.event)
        if len(events) > self._max_events:
            self._drop_events(len(events) - self._max_events + self._max_events // 10)

    def _drop_events(self, n: int) -> None:
        """Drop the ``n`` oldest task events (a tenth of the cap at once, not one by one)."""
        if not self.dropped_events:
            logger.warning("more than %d task events wait for the GCS, which is unreachable; the "
                           "oldest are dropped (their tasks run on; only their history is lost)",
                           self._max_events)
        del self._events[:n]
        self.dropped_events += n

    def object_location(self, action: ObjectLocation) -> None:
        self._objects.append(gcs_pb2.ObjectLocationUpdate(
            object_id=action.object_id, node_id=self._node_id, size=action.size,
            removed=action.removed, owner_id=action.owner_id))

    def store_moves(self, moves: dict[bytes, tuple[int, bool]]) -> None:
        """Objects the store moved to disk or back (``SharedMemoryStore.take_moves``): their
        rows say so (``spilled``)."""
        for oid, (size, spilled) in moves.items():
            self._objects.append(gcs_pb2.ObjectLocationUpdate(
                object_id=oid, node_id=self._node_id, size=size, spilled=spilled))

    def put_actor(self, action: PutActor) -> None:
        row = action.row
        row.node_address = self._node_address

        def send(gcs: GcsWriter) -> Awaitable[None]:
            return gcs.put_actor(row)
        self._writes.append(_Write(f"row of actor {_ids.short(row.actor_id)} ({row.state})", send))

    def release_actor_name(self, action: ReleaseActorName) -> None:
        namespace, name = action.namespace, action.name

        def send(gcs: GcsWriter) -> Awaitable[None]:
            return gcs.release_actor_name(namespace, name)
        self._writes.append(_Write(f"release of actor name {namespace}/{name}", send))

    # ---- sending ----

    def pending(self) -> int:
        """Writes not sent yet (events, locations, actor rows and names)."""
        return len(self._events) + len(self._objects) + len(self._writes)

    async def flush(self) -> None:
        """Send actor writes in order, then one batch of events and object locations.

        A failed call raises (a ``ClusterError`` from the GCS client) after putting what
        it carried back in front of what was made since: the next flush sends it again.
        A cancelled flush does the same. Flushes wait for one another.
        """
        async with self._lock:
            await self._send_writes()
            await self._send_batch()

    async def settle(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for a flush under way to end; True if it did."""
        if not self._lock.locked():
            return True

        async def wait_turn() -> None:
            async with self._lock:
                pass
        try:
            await asyncio.wait_for(wait_turn(), timeout)
        except TimeoutError:
            return False
        return True

    async def _send_writes(self) -> None:
        writes = self._writes
        while writes:
            write = writes[0]
            try:
                await write.send(self._gcs)
            except InvalidRequestError as e:
                logger.error("the GCS refused the %s; it is dropped: %s", write.what, e)
            # Only a success (or a refusal for good) takes the write off the queue.
            writes.popleft()

    async def _send_batch(self) -> None:
        if not self._events and not self._objects:
            return
        events, self._events = self._events, []
        objects, self._objects = self._objects, []
        try:
            await self._gcs.report_events(events, objects)
            if self.dropped_events:
                logger.warning("the GCS is back; %d task events made while it was away were dropped",
                               self.dropped_events)
                self.dropped_events = 0
        except InvalidRequestError as e:
            logger.error("the GCS refused a batch of %d task events and %d object locations; "
                         "it is dropped: %s", len(events), len(objects), e)
        except BaseException:
            # Failed or cancelled: the batch goes back in front of what came meanwhile.
            self._events[:0] = events
            self._objects[:0] = objects
            if len(self._events) > self._max_events:
                self._drop_events(len(self._events) - self._max_events)
            raise
