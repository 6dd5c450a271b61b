"""SchedulerService: the thin ``GlobalScheduler`` servicer of one replica.

``Schedule`` validates the request, asks ``PlacementAttempts`` (``state``) for a node and
hands the task over with ``NodeManager.ForwardTask``. When the best node is the one that
spilled the task, the reply says so and nothing is forwarded: that node runs it. A task
that can never be placed (its strategy names a node that is gone) gets a reply with
``unschedulable`` set instead of a node. A node whose call fails (UNAVAILABLE: it died; a deadline; any
other error) or that answers ``accepted=false`` is left out for this task until the GCS
sends a newer row of it. While no node is left to try (none can ever fit the task, or
every one that could has failed to take it, and the spilling node cannot run it either)
the call stays open: it waits for the next change of the view (``view_changed``, called
by the ``NodeFeed``) and tries again. A caller that cancels the call, or whose deadline
passes, ends the wait.

Status codes: INVALID_ARGUMENT for a request without ``spec.task_id``, with negative or
non-finite resources, or that the target node rejects as malformed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from runtime._ids import short
from runtime.exceptions import ConnectionLostError, InvalidRequestError
from runtime.protocol import node_pb2, scheduler_pb2, scheduler_pb2_grpc
from runtime.protocol.checks import spec_problem
from runtime.rpc.channel import NodeClients, token_metadata
from runtime.rpc.errors import translate
from runtime.scheduler.state import (
    ClusterView,
    Placement,
    PlacementAttempts,
    Unschedulable,
    Wait,
    check_resources,
)

logger = logging.getLogger(__name__)

__all__ = ["SchedulerService", "SchedulerStatistics"]

_Ctx = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class SchedulerStatistics:
    """A snapshot of one replica's counters (``SchedulerService.statistics()``)."""

    placed: int  #: tasks a node accepted
    refused: int  #: forward attempts that failed or were refused
    waiting: int  #: calls now waiting for a node that can take their task
    nodes: int  #: nodes in the view, dead ones included
    channels: int  #: cached node channels


class SchedulerService(scheduler_pb2_grpc.GlobalSchedulerServicer):
    """``GlobalScheduler`` over ``view``; ``adders()`` feeds ``create_server``.

    Parameters
    ----------
    view
        The cluster view, kept current by a ``NodeFeed`` that calls ``view_changed``.
    name
        This replica's name (``gs-0``), put in every ``ForwardTaskRequest`` and reply.
    token
        The cluster token, sent to node managers.
    forward_timeout
        Seconds a node has to answer ``ForwardTask`` before it counts as failed.
    """

    def __init__(self, view: ClusterView, *, name: str, token: str, forward_timeout: float = 10.0) -> None:
        self.view = view
        self.name = name
        self.forward_timeout = forward_timeout
        self._metadata = token_metadata(token)
        self._nodes = NodeClients()
        self._changed = asyncio.Event()
        self._placed = self._refused = self._waiting = 0

    def adders(self) -> list[tuple[Callable[[Any, grpc.aio.Server], None], Any]]:
        return [(scheduler_pb2_grpc.add_GlobalSchedulerServicer_to_server, self)]

    def view_changed(self) -> None:
        """Wake every call waiting for a node (the view took a change from the GCS)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(self._placed, self._refused, self._waiting, len(self.view),
                                   len(self._nodes))

    async def close(self) -> None:
        """Close the cached node channels."""
        await self._nodes.close()

    async def Schedule(self, request: scheduler_pb2.ScheduleRequest,
                       context: _Ctx) -> scheduler_pb2.ScheduleReply:
        spec = request.spec
        bad = spec_problem(spec)
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Schedule: {bad}")
        try:
            resources = check_resources(spec.resources)
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"task {short(spec.task_id)}: {err}")
        forward = node_pb2.ForwardTaskRequest(spec=spec, args=request.args, home_address=request.home_address,
                                              home_node_id=request.from_node_id, scheduler=self.name,
                                              reason=request.reason)
        attempts = PlacementAttempts(self.view, resources, request.inputs, home=request.from_node_id,
                                     strategy=spec.strategy, home_load=request.home_load)
        waited = False
        while True:
            changed = self._changed  # taken before placing, so no change is missed
            step = attempts.next()
            if isinstance(step, Unschedulable):
                logger.info("task %s (%s) cannot be placed: %s", short(spec.task_id), spec.name, step.why)
                return scheduler_pb2.ScheduleReply(scheduler=self.name, unschedulable=step.why)
            if isinstance(step, Wait):
                if not waited:
                    logger.info("task %s (%s) waits for a node: %s", short(spec.task_id), spec.name, step.why)
                waited = True
                self._waiting += 1
                try:
                    await changed.wait()
                finally:
                    self._waiting -= 1
                continue
            assert isinstance(step, Placement)
            reply = scheduler_pb2.ScheduleReply(node_id=step.node_id, node_address=step.address,
                                                scheduler=self.name, why=step.why)
            if step.node_id == request.from_node_id:
                self._placed += 1  # back on its home: the reply says so, nothing to forward
                return reply
            forward.why = step.why
            try:
                why_not = await self._forward(step, forward)
            except InvalidRequestError as err:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"node {short(step.node_id)} rejected task {short(spec.task_id)}: {err}")
            if why_not is None:
                self._placed += 1
                logger.debug("task %s (%s) -> node %s (%s)%s", short(spec.task_id), spec.name,
                             short(step.node_id), step.why, " after waiting" if waited else "")
                return reply
            self._refused += 1
            logger.warning("node %s at %s did not take task %s (%s); trying another node",
                           short(step.node_id), step.address, short(spec.task_id), why_not)
            attempts.failed(step)

    async def _forward(self, placement: Placement, forward: node_pb2.ForwardTaskRequest) -> str | None:
        """Hand the task to the placed node: None when accepted, else why not.

        Raises ``InvalidRequestError`` when the node rejects the task itself as malformed.
        """
        rpc = self._nodes.get(placement.address)
        try:
            reply: node_pb2.ForwardTaskReply = await rpc.ForwardTask(
                forward, metadata=self._metadata, timeout=self.forward_timeout)
        except grpc.aio.AioRpcError as err:
            failure = translate(err, "node manager", placement.address)
            if isinstance(failure, InvalidRequestError):
                raise failure from err
            if isinstance(failure, ConnectionLostError):  # likely dead: do not keep its channel
                await self._nodes.drop(placement.address)
            return f"{err.code().name}: {err.details()}"
        return None if reply.accepted else (reply.why_not or "refused without a reason")

