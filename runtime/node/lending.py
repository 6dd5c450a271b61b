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
from runtime.node.workers import Worker, WorkerTable


class Lending:
    """Which blocked worker waits for which task, and how deep workers may stack."""

    __slots__ = ("_resources", "_workers", "max_inline_depth", "waited_by")

    def __init__(self, max_inline_depth: int, workers: WorkerTable, resources: Resources) -> None:
        #: Most tasks stacked in one blocked worker (each costs Python stack frames).
        self.max_inline_depth = max_inline_depth
        self._workers = workers
        self._resources = resources
        #: task id -> worker id of a blocked worker waiting for that task's result.
        self.waited_by: dict[bytes, bytes] = {}

    def can_stack(self, w: Worker) -> bool:
        """True when every frame of ``w`` is blocked and it may take one more."""
        return 0 < self._workers.stack_depth(w) < self.max_inline_depth

    def inline_host(self, task_id: bytes, parent_id: bytes) -> Worker | None:
        """A blocked worker to run task ``task_id`` in: the one waiting for it, or the one
        whose innermost task is its parent."""
        waiter = self.waited_by.get(task_id)
        workers = self._workers
        for wid in (waiter, workers.running(parent_id)):
            if wid is None:
                continue
            w = workers.get(wid)
            if (w is not None and self.can_stack(w)
                    and (wid == waiter or workers.innermost(w) == parent_id)):
                return w
        return None

    def inline_candidates(self, w: Worker, children: Mapping[bytes, set[bytes]]) -> list[bytes]:
        """Tasks ``w`` could run nested now, best first: those it waits for, then those its
        innermost task submitted. Empty when it cannot take one."""
        if not self.can_stack(w):
            return []
        wid = w.worker_id
        candidates = [tid for tid, waiter in self.waited_by.items() if waiter == wid]
        candidates.extend(children.get(self._workers.innermost(w), ()))
        return candidates

    def set_blocked(self, w: Worker, task_id: bytes, blocked: bool) -> bool | None:
        """Task ``task_id`` of ``w`` (else its innermost) waits in ``get`` (``blocked``) or
        runs again: a blocked task lends its CPUs back to the node meanwhile. None when
        ``w`` runs nothing; True when the task was newly blocked."""
        frame = self._workers.frame_for(w, task_id)
        if frame is None:
            return None
        if blocked:
            lent = self._workers.block(frame)
            if lent is None:
                return False
            self._resources.lend(lent)
            return True
        back = self._workers.unblock(frame)
        if back is not None:
            self._resources.take_back(back)
        return False

    def waiting(self) -> int:
        """How many tasks a blocked worker waits for."""
        return len(self.waited_by)

    def waits_for(self, task_id: bytes, worker_id: bytes) -> None:
        self.waited_by[task_id] = worker_id

    def forget(self, task_id: bytes) -> None:
        """Task ``task_id`` is over: nobody waits for it any more."""
        self.waited_by.pop(task_id, None)
