"""What a node tells a task's owner about it (``NodeOp.event``), on the owner's side.

Two kinds of event reach an owner (a driver, or a worker that submitted tasks):

- **warnings** (INFEASIBLE: no node can ever run the task). Each is shown once per origin
  (a notebook cell, see ``runtime.state.set_origin_provider``): the owner remembers the
  origin of the tasks it submitted, so a warning handler (the notebook extension's, set
  with ``runtime.state.set_warning_handler``) can write it under the cell that submitted
  the task, not under whichever cell happens to be running or started the connection.
  Without a handler it is printed to this process's stderr;
- **an actor's constructor returned** (its creation task FINISHED, with ``actor_id``): the
  owner knows at once that the actor is ALIVE, while its GCS row waits for the node's next
  report. ``ActorHandle.state()`` and the notebook's repr use it (``started``).

Only warnings are handed on to ``runtime.state.add_task_event_handler``'s handlers.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from runtime.protocol import common_pb2, node_pb2
from runtime.protocol.states import TaskState

logger = logging.getLogger(__name__)

#: How many task origins, shown warnings and started actors an owner remembers (the
#: oldest are forgotten first). An infeasible warning comes right after its submission,
#: and a forgotten actor's GCS row is long written.
REMEMBERED = 4096

#: Called with a warning as lines printed to stderr by its task, tagged with its origin.
WarningHandler = Callable[[node_pb2.LogLines], None]


class _Recent(OrderedDict[Any, Any]):
    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > REMEMBERED:
            self.popitem(last=False)


class TaskEvents:
    """The owner's side of task events (see the module docstring). Thread-safe: tasks are
    submitted from any thread, events arrive on the IO thread."""

    def __init__(self) -> None:
        #: Writes a warning where it belongs (None: printed to stderr).
        self.warning_handler: WarningHandler | None = None
        self._lock = threading.Lock()
        self._origins: _Recent = _Recent()
        self._warned: _Recent = _Recent()
        self._started: _Recent = _Recent()

    def submitted(self, spec: common_pb2.TaskSpec) -> None:
        """This owner submitted ``spec``: remember its origin, where its warnings go."""
        if spec.origin:
            with self._lock:
                self._origins.remember(spec.task_id, spec.origin)

    def started(self, actor_id: bytes) -> bool:
        """Whether the constructor of actor ``actor_id`` (created by this owner) returned."""
        with self._lock:
            return actor_id in self._started

    def on_event(self, ev: common_pb2.TaskEvent) -> bool:
        """Take in one event from the node; True when it is a warning (for the handlers)."""
        if ev.actor_id and ev.state == TaskState.FINISHED:  # the constructor returned
            with self._lock:
                self._started.remember(ev.actor_id, True)
            return False
        if ev.state == TaskState.INFEASIBLE:
            self._warn(ev)
        return True

    def _warn(self, ev: common_pb2.TaskEvent) -> None:
        with self._lock:
            origin = self._origins.get(ev.task_id, "")
            if (origin, ev.detail) in self._warned:  # once per cell, not at every submission
                return
            self._warned.remember((origin, ev.detail), True)
        text = f"Warning: {ev.detail}"
        handler = self.warning_handler
        if handler is None:
            print(text, file=sys.stderr)
            return
        lines = node_pb2.LogLines(task_id=ev.task_id, name=ev.name, stderr=True, lines=[text],
                                  origin=origin)
        try:
            handler(lines)
        except Exception:  # a user's handler must not end the session; the warning still shows
            logger.exception("warning handler failed")
            print(text, file=sys.stderr)
