"""NodeFeed: keep a ``ClusterView`` current from the GCS ``nodes`` table.

It subscribes to ``nodes``: the snapshot replaces the whole view at once (so nodes deleted
while it was away disappear), then every change is applied as it comes. When the stream
ends (the GCS restarted, or dropped this subscriber for falling behind) it subscribes
again after a backoff that doubles from ``min_backoff`` up to ``max_backoff`` seconds,
with jitter, and restarts from ``min_backoff`` after each good snapshot. Meanwhile the
view keeps its last picture: placing on a stale view is still better than refusing, and
a node that turns out dead fails its ``ForwardTask`` and is skipped. The view is not
``current`` meanwhile: a task pinned to a node it does not know waits for the next
snapshot (the node may have joined while the GCS was away) instead of being refused.
Through a GCS outage the next subscription waits for the GCS to come back (the client
logs the outage once).
A GCS that came back as another cluster ends ``run()``: this replica's cluster is gone.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from runtime.exceptions import ConnectionLostError, InternalError
from runtime.gcs.client import GcsClient
from runtime.protocol import gcs_pb2
from runtime.scheduler.state import ClusterView

logger = logging.getLogger(__name__)

__all__ = ["NodeFeed"]


class NodeFeed:
    """Follows the GCS ``nodes`` table into ``view``; ``run()`` until cancelled.

    Parameters
    ----------
    gcs
        The GCS client (created on the running loop).
    view
        The view to keep current.
    on_change
        Called after every change applied to the view (wakes waiting tasks).
    on_synced
        Awaited after every snapshot, first or after a reconnect (the process re-registers
        itself in the ``kv`` table then, in case the GCS restarted without it).
    min_backoff, max_backoff
        Bounds in seconds of the wait before resubscribing.

    ``synced`` is set once the first snapshot is in the view.
    """

    def __init__(self, gcs: GcsClient, view: ClusterView, on_change: Callable[[], None], *,
                 on_synced: Callable[[], Awaitable[None]] | None = None,
                 min_backoff: float = 0.05, max_backoff: float = 2.0) -> None:
        if not 0 < min_backoff <= max_backoff:
            raise ValueError(f"need 0 < min_backoff <= max_backoff, got {min_backoff}, {max_backoff}")
        self.gcs, self.view = gcs, view
        self._on_change, self._on_synced = on_change, on_synced
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.synced = asyncio.Event()
        #: Subscriptions that ended and were retried (for statistics and tests).
        self.reconnects = 0
        self._got_snapshot = False

    async def run(self) -> None:
        """Subscribe, apply, resubscribe on loss; returns when the GCS turns out to be another
        cluster, or by cancellation."""
        backoff = self.min_backoff
        while True:
            self._got_snapshot = False
            try:
                await self._follow()
                reason = "the stream ended"
            except (ConnectionLostError, InternalError, TimeoutError) as err:
                if getattr(err, "cluster_restarted", False):
                    return
                reason = str(err)
            self.view.current = False  # until the next snapshot: nodes may join meanwhile
            if self._got_snapshot:  # it worked for a while: start the backoff over
                backoff = self.min_backoff
            self.reconnects += 1
            delay = backoff * random.uniform(0.5, 1.0)
            log = logger.warning if self._got_snapshot else logger.info  # once per outage
            log("lost the GCS nodes subscription (%s); subscribing again in %.2f s", reason, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.max_backoff)

    async def _follow(self) -> None:
        snapshot: list[gcs_pb2.NodeRow] = []
        async for msg in self.gcs.subscribe(["nodes"]):
            if msg.snapshot:
                snapshot.append(gcs_pb2.NodeRow.FromString(msg.value))
                continue
            if msg.snapshot_done:
                self.view.reset(snapshot)
                snapshot = []
                self._got_snapshot = True
                logger.info("following %d node(s) from the GCS at %s", len(self.view), self.gcs.address)
                self._on_change()
                if self._on_synced is not None:
                    await self._on_synced()
                self.synced.set()
                continue
            self.view.apply(msg.key, msg.value, msg.deleted)
            self._on_change()
