"""Workers that wait: CPU lending and work-first nested execution. Pure, a part of the
local scheduler.

A worker blocked in ``get`` lends its CPUs back. The node then prefers to run, *inside*
that worker (nested on its stack), queued tasks its innermost task waits for or
submitted: fork/join trees run on few processes. A worker's frames are matched by task id,
never by position, since a nested task may finish just as another is pushed on top.
Only the innermost task's own work is stacked on a worker, so every frame of a worker is
something the frame below needs: no cycle of waits across workers can form.
"""

from __future__ import annotations

from collections.abc import Mapping

from runtime.node.resources import Resources
from runtime.node.workers import Frame, Worker, WorkerTable
from runtime.protocol.states import WorkerState


class Lending:
    """Which blocked worker waits for which task, and how deep workers may stack."""

    __slots__ = ("max_inline_depth", "waited_by")

    def __init__(self, max_inline_depth: int) -> None:
        #: Most tasks stacked in one blocked worker (each costs Python stack frames).
        self.max_inline_depth = max_inline_depth
        #: task id -> worker id of a blocked worker waiting for that task's result.
        self.waited_by: dict[bytes, bytes] = {}

    def can_stack(self, w: Worker) -> bool:
        """True when every frame of ``w`` is blocked and it may take one more."""
        return (bool(w.frames) and w.state == WorkerState.BUSY and all(f.blocked for f in w.frames)
                and len(w.frames) < self.max_inline_depth)

    def inline_host(self, task_id: bytes, parent_id: bytes, workers: WorkerTable) -> Worker | None:
        """A blocked worker to run task ``task_id`` in: the one waiting for it, or the one
        whose innermost task is its parent."""
        waiter = self.waited_by.get(task_id)
        for wid in (waiter, workers.running_on.get(parent_id)):
            if wid is None:
                continue
            w = workers.get(wid)
            if (w is not None and self.can_stack(w)
                    and (wid == waiter or w.frames[-1].task_id == parent_id)):
                return w
        return None

    def inline_candidates(self, w: Worker, children: Mapping[bytes, set[bytes]]) -> list[bytes]:
        """Tasks ``w`` could run nested now, best first: those it waits for, then those its
        innermost task submitted. Empty when it cannot take one."""
        if not self.can_stack(w):
            return []
        wid = w.worker_id
        candidates = [tid for tid, waiter in self.waited_by.items() if waiter == wid]
        candidates.extend(children.get(w.frames[-1].task_id, ()))
        return candidates

    @staticmethod
    def block(frame: Frame, resources: Resources) -> None:
        """``frame``'s task waits in ``get``: its CPUs go back to the node meanwhile."""
        frame.blocked = True
        cpu = frame.resources.get("CPU", 0.0)
        frame.lent = cpu
        resources.lend(cpu)

    @staticmethod
    def unblock(frame: Frame, resources: Resources) -> None:
        """``frame``'s task runs again: it takes its CPUs back."""
        frame.blocked = False
        resources.take_back(frame.lent)
        frame.lent = 0.0

    def waits_for(self, task_id: bytes, worker_id: bytes) -> None:
        self.waited_by[task_id] = worker_id

    def forget(self, task_id: bytes) -> None:
        """Task ``task_id`` is over: nobody waits for it any more."""
        self.waited_by.pop(task_id, None)
