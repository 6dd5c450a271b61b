"""A simulated global-scheduler replica: its own real ``ClusterView`` on a :class:`Server`.

It does what ``SchedulerService.Schedule`` does, with the same pure objects (through
``adapter.ScheduleCall``): a ``Schedule`` call from a node is a job that builds the
task's ``PlacementAttempts`` and takes its first step (the call named ``place``, charged
what it measured). A placement on another node sends ``ForwardTask`` to it; when the node
has taken the task, the reply goes home. A placement back on the home, or
"unschedulable", is answered at once. A call that has to wait stays open until the view
changes, then steps again (``retry``). Rows of the GCS ``nodes`` table arrive as jobs too
(``rows``): a replica busy placing sees heartbeats late, as the real one would. Only the
placing is charged to the replica: while it waits for a node's reply it serves others,
as ``grpc.aio`` does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from runtime.sim import adapter
from runtime.sim.adapter import Answer, Change, Forward, Hold, ScheduleCall, Spill
from runtime.sim.loop import CostModel, EventLoop, Network, Server

__all__ = ["Home", "SimReplica", "Target"]


class Home(Protocol):
    """The node that spilled a task, as the replica sees it."""

    index: int
    address: str


class Target(Protocol):
    """A node a replica forwards a task to."""

    index: int

    def accept(self, request: Any, at: float, then: Callable[[float], None]) -> None: ...


class _Call:
    __slots__ = ("answer", "call", "home")

    def __init__(self, call: ScheduleCall, home: Home, answer: Callable[[Any], None]) -> None:
        self.call, self.home, self.answer = call, home, answer


class SimReplica:
    """Replica ``gs-<index>`` (see the module docstring).

    ``node_of`` finds the simulated node of a node id (to forward tasks to).
    """

    def __init__(self, index: int, *, loop: EventLoop, net: Network, cost: CostModel, policy: str,
                 rng: random.Random, task_time_s: float, node_of: Callable[[bytes], Target]) -> None:
        self.index = index
        self.name = f"gs-{index}"
        self.loop, self.net = loop, net
        self.server = Server(loop, self.name, "replica", cost)
        self.view = adapter.new_view(policy, rng, task_time_s)
        self._node_of = node_of
        self._waiting: list[_Call] = []
        #: Calls answered, forwards sent, waits.
        self.answered = self.forwarded = self.waits = 0

    def snapshot(self, rows: Sequence[Any]) -> None:
        """The first snapshot of the ``nodes`` table (before the run; not charged)."""
        adapter.reset_view(self.view, rows)

    # ---- Schedule ------------------------------------------------------------------

    def schedule(self, home: Home, action: Spill, at: float, answer: Callable[[Any], None]) -> None:
        """``home`` sends ``Schedule`` at ``at``; ``answer(reply)`` runs when the reply reaches it."""
        arrive = self.net.arrival(("n", home.index), ("r", self.index), at)
        self.loop.call_at(arrive, lambda: self.server.post(lambda: self._start(home, action, answer)))

    def _start(self, home: Home, action: Spill, answer: Callable[[Any], None]) -> None:
        def first() -> tuple[_Call, adapter.ScheduleStep]:
            call = _Call(ScheduleCall(self.view, action, home.address, self.name), home, answer)
            return call, call.call.step()
        call, step = self.server.call("place", first)
        self._after(call, step)

    def _retry(self, call: _Call) -> None:
        self._after(call, self.server.call("retry", call.call.step))

    def _after(self, call: _Call, step: adapter.ScheduleStep) -> None:
        t = self.server.free_at
        if isinstance(step, Hold):
            self.waits += 1
            self._waiting.append(call)
        elif isinstance(step, Answer):
            self._reply(call, step.reply, t)
        else:
            assert isinstance(step, Forward)
            self.forwarded += 1
            target = self._node_of(step.node_id)
            reply = step.reply
            arrive = self.net.arrival(("r", self.index), ("n", target.index), t)
            target.accept(call.call.forward_request(), arrive,
                          lambda sent: self._forwarded(call, reply, target, sent))

    def _forwarded(self, call: _Call, reply: Any, target: Target, sent: float) -> None:
        back = self.net.arrival(("n", target.index), ("r", self.index), sent)
        self.loop.call_at(back, lambda: self._reply(call, reply, back))

    def _reply(self, call: _Call, reply: Any, t: float) -> None:
        self.answered += 1
        arrive = self.net.arrival(("r", self.index), ("n", call.home.index), t)
        answer = call.answer
        self.loop.call_at(arrive, lambda: answer(reply))

    # ---- the view ------------------------------------------------------------------

    def rows(self, changes: list[Change], at: float) -> None:
        """Changes of the ``nodes`` table published by the GCS reach the replica at ``at``."""
        self.loop.call_at(at, lambda: self.server.post(lambda: self._rows(changes)))

    def _rows(self, changes: list[Change]) -> None:
        view = self.view
        self.server.call("rows", lambda: adapter.apply_rows(view, changes))
        if self._waiting:  # every waiting call tries again (SchedulerService.view_changed)
            waiting, self._waiting = self._waiting, []
            for call in waiting:
                self.server.post(self._retry_later(call))

    def _retry_later(self, call: _Call) -> Callable[[], None]:
        return lambda: self._retry(call)
