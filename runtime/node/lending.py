"""Workers that wait: CPU lending and work-first nested execution. Pure, part of NodeState.

A worker blocked in ``get`` lends its CPUs back. The node then prefers to run, *inside*
that worker (nested on its stack), queued tasks its innermost task waits for or
submitted: fork/join trees run on few processes. A worker's frames are matched by task id,
never by position, since a nested task may finish just as another is pushed on top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime import _ids
from runtime.protocol import node_pb2

if TYPE_CHECKING:
    from runtime.node.state import Frame, NodeState, Worker

#: Most tasks stacked in one blocked worker (each costs Python stack frames).
MAX_INLINE_DEPTH = 48


class LendingMixin:
    """Blocking, lending and inline execution for NodeState."""

    @staticmethod
    def _pop_frame(w: Worker, task_id: bytes) -> Frame | None:
        # By id, not position: a nested task may finish just as another is pushed on top.
        for i in range(len(w.frames) - 1, -1, -1):
            if w.frames[i].task_id == task_id:
                return w.frames.pop(i)
        # A task sent ahead that the worker ran early (nested, while the one before it
        # waited in get): it held no resources.
        for f in w.queued:
            if f.task_id == task_id:
                w.queued.remove(f)
                f.resources = {}
                return f
        return None

    @staticmethod
    def _all_blocked(w: Worker) -> bool:
        return bool(w.frames) and w.state == "BUSY" and all(f.blocked for f in w.frames)

    def _run_inline(self: NodeState, w: Worker) -> None:
        """Give a blocked worker a queued task of its own: one its innermost task waits for,
        or one that task submitted. Fork/join trees then run on few processes (work-first).
        Only the innermost task's own work is stacked on it, so every frame of a worker is
        something the frame below needs: no cycle of waits across workers can form."""
        if not self._all_blocked(w) or len(w.frames) >= MAX_INLINE_DEPTH:
            return
        top = w.frames[-1].task_id
        candidates = [tid for tid, wid in self.waited_by.items() if wid == w.worker_id]
        candidates.extend(self.children.get(top, ()))
        for tid in candidates:
            task = self.tasks.get(tid)
            if task is not None and task.state == "READY" and self._can_run(task.resources):
                self._dispatch(task, w)
                return

    def blocked(self: NodeState, client_id: bytes, state: node_pb2.BlockedState) -> None:
        client = self.clients.get(client_id)
        w = self.workers.get(client.worker_id) if client is not None else None
        if w is None or not w.frames:
            return
        frame = next((f for f in w.frames if f.task_id == state.task_id), w.frames[-1])
        if state.blocked and not frame.blocked:
            frame.blocked = True
            cpu = frame.resources.get("CPU", 0.0)
            frame.lent = cpu
            self.available["CPU"] = self.available.get("CPU", 0.0) + cpu
            for oid in state.waiting_on:
                tid = _ids.task_of(oid)
                t = self.tasks.get(tid)
                if t is not None and t.state in ("READY", "WAITING"):
                    self.waited_by[tid] = w.worker_id
            self._run_inline(w)
        elif not state.blocked and frame.blocked:
            frame.blocked = False
            self.available["CPU"] = self.available.get("CPU", 0.0) - frame.lent
            frame.lent = 0.0
        self._schedule()

