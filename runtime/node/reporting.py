"""What the node writes to the GCS: task events, object locations, actor rows, names.

Task events and object locations are batched and sent on a short timer (one
``ReportEvents`` call per batch). Actor rows and released actor names are written in the
order the state made them, before the batch: every actor transition is published,
however short-lived the state was.
"""

from __future__ import annotations

import logging
from typing import Protocol

from runtime.node.actions import ObjectLocation, PutActor, ReleaseActorName, ReportEvent
from runtime.protocol import common_pb2, gcs_pb2

logger = logging.getLogger(__name__)


class GcsWriter(Protocol):
    """The GCS calls the reporter makes (``runtime.gcs.client.GcsClient`` has them)."""

    async def report_events(self, task_events: list[common_pb2.TaskEvent],
                            object_updates: list[gcs_pb2.ObjectLocationUpdate]) -> None: ...

    async def put_actor(self, row: gcs_pb2.ActorRow) -> None: ...

    async def release_actor_name(self, namespace: str, name: str) -> None: ...


class GcsReporter:
    """Collects the state's GCS actions; ``flush()`` sends what has accumulated."""

    def __init__(self, gcs: GcsWriter, node_id: bytes, node_address: str) -> None:
        self._gcs = gcs
        self._node_id = node_id
        self._node_address = node_address
        self._events: list[common_pb2.TaskEvent] = []
        self._objects: list[gcs_pb2.ObjectLocationUpdate] = []
        self._actor_writes: list[PutActor | ReleaseActorName] = []

    # ---- outlets of the dispatch table ----

    def report_event(self, action: ReportEvent) -> None:
        self._events.append(action.event)

    def object_location(self, action: ObjectLocation) -> None:
        self._objects.append(gcs_pb2.ObjectLocationUpdate(
            object_id=action.object_id, node_id=self._node_id, size=action.size,
            removed=action.removed))

    def put_actor(self, action: PutActor) -> None:
        action.row.node_address = self._node_address
        self._actor_writes.append(action)

    def release_actor_name(self, action: ReleaseActorName) -> None:
        self._actor_writes.append(action)

    # ---- sending ----

    def pending(self) -> int:
        """Writes not sent yet (events, locations, actor rows and names)."""
        return len(self._events) + len(self._objects) + len(self._actor_writes)

    async def flush(self) -> None:
        """Send actor writes in order, then one batch of events and object locations.

        A failed call raises (a ``ClusterError`` from the GCS client); what was taken
        for it is dropped, as a later batch supersedes it.
        """
        while self._actor_writes:
            writes, self._actor_writes = self._actor_writes, []
            for w in writes:
                if isinstance(w, PutActor):
                    await self._gcs.put_actor(w.row)
                else:
                    await self._gcs.release_actor_name(w.namespace, w.name)
        if not self._events and not self._objects:
            return
        events, self._events = self._events, []
        objects, self._objects = self._objects, []
        await self._gcs.report_events(events, objects)
