"""Cancelling the tasks of one worker: SIGINT for a running one, a mark for a queued one.

A cancel of a task running in the main thread interrupts it with ``KeyboardInterrupt``
(SIGINT, raised only while that task is on top of the stack). A blocked task's worker
runs the tasks it waits for on top of it: a cancel of a task below the top waits until
the tasks above it return. A cancel of a task given to this worker but not started yet
(its ExecuteTask and the cancel came in one batch) makes it fail as soon as it starts.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from runtime import _ids

logger = logging.getLogger(__name__)


class Cancels:
    """The cancel bookkeeping of one worker process (the IO thread writes, tasks read)."""

    def __init__(self, early_max: int) -> None:
        #: Tasks whose cancellation was asked while they run (SIGINT raises in their frame).
        self._requested: set[bytes] = set()
        #: Tasks running in this process now.
        self._running: set[bytes] = set()
        #: The main thread's task stack (ids, innermost last). The GIL keeps it consistent.
        self._main_stack: list[bytes] = []
        #: Cancelled before they started. Bounded: a cancel that crossed the task's result
        #: on the wire leaves an entry nobody removes.
        self._early: dict[bytes, None] = {}
        self._early_max = early_max
        self._main_ident: int | None = None

    def install(self, running_task: Callable[[], bytes | None]) -> None:
        """Handle SIGINT in the main thread; ``running_task`` names the task on top there."""
        self._main_ident = threading.main_thread().ident

        def on_sigint(signum: int, frame: Any) -> None:
            if running_task() in self._requested:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)

    def started(self, task_id: bytes, on_main: bool) -> bool:
        """A task starts; False when it was cancelled before (it must fail at once)."""
        self._running.add(task_id)
        if on_main:
            self._main_stack.append(task_id)
        if task_id in self._early:
            del self._early[task_id]
            return False
        return True

    def was_requested(self, task_id: bytes) -> bool:
        """Whether a cancel of ``task_id`` arrived while it ran (its interrupt is ours)."""
        return task_id in self._requested

    def finished(self, task_id: bytes, on_main: bool) -> None:
        self._running.discard(task_id)
        self._requested.discard(task_id)
        if on_main:
            self._main_stack.pop()

    def below_was_cancelled(self) -> bool:
        """After a nested task returned: whether the task now on top of the main thread was
        cancelled meanwhile (its SIGINT found the nested one on top and was ignored)."""
        return bool(self._main_stack) and self._main_stack[-1] in self._requested

    def request(self, task_id: bytes) -> None:
        """The node asks to cancel ``task_id`` (called on the IO thread)."""
        if task_id in self._running:
            self._requested.add(task_id)
            stack = self._main_stack
            if task_id in stack and stack[-1] != task_id:
                logger.info("cancel of task %s deferred: task %s runs nested on top of it; it is "
                            "interrupted when that one returns", _ids.short(task_id),
                            _ids.short(stack[-1]))
                return
            if self._main_ident is not None:
                signal.pthread_kill(self._main_ident, signal.SIGINT)
        else:  # given to this worker and not started yet: it fails as soon as it starts
            self._early[task_id] = None
            while len(self._early) > self._early_max:
                del self._early[next(iter(self._early))]
