"""The global scheduler: stateless replicas that place the tasks node managers spill.

Layering, bottom up:

``policies``
    One placement policy per module, each a pure function of the candidate nodes, the
    task's resources and where its inputs live: ``locality`` (the default: least
    estimated wait + input transfer time) and ``spread`` (least loaded).
``state``
    ``ClusterView``: the scheduler's picture of the nodes, fed by rows of the GCS
    ``nodes`` table, and ``place()``, which asks the policy and charges the chosen node
    optimistically until its next heartbeat; ``PlacementAttempts``: one task's tries
    (never back to the node that spilled it; skip nodes that failed it; forward, wait,
    or tell the spilling node to keep it). Pure: no I/O, no asyncio, no gRPC.
``feed``
    ``NodeFeed``: follows the GCS ``nodes`` table (snapshot, then changes) into a
    ``ClusterView``, resubscribing with a bounded backoff when the GCS goes away.
``service``
    ``SchedulerService``: the thin ``GlobalScheduler.Schedule`` servicer. It forwards
    each placement with ``NodeManager.ForwardTask`` and keeps the call open while no
    live node can take the task.
``__main__``
    ``python -m runtime.scheduler``: one replica as a process, registered in the GCS
    with ``GcsClient.register_scheduler`` (key built by ``runtime.gcs.keys``).
"""

from __future__ import annotations

from runtime.gcs.keys import SCHEDULER_PREFIX
from runtime.scheduler.state import ClusterView, InputLocation, NodeView, Placement

__all__ = ["KV_PREFIX", "ClusterView", "InputLocation", "NodeView", "Placement"]

#: Replicas register in the GCS ``kv`` table under this prefix + their name (value
#: ``host:port``); defined in ``runtime.gcs.keys``, re-exported for existing callers.
KV_PREFIX = SCHEDULER_PREFIX
