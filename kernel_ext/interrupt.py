"""Interrupting a cell cancels the tasks it started: ``CellInterrupts``.

Between IPython's ``pre_run_cell`` and ``post_run_cell`` events, every task the kernel
submits (``runtime.state.add_submit_handler``; from any thread) belongs to the running
cell. Its result refs are kept *weakly*: a task whose refs the cell dropped is not one it
waits on, and holding them would keep the results alive. When the cell ends with a
``KeyboardInterrupt`` (after IPython showed it), the tasks still unfinished are cancelled
as ``%%remote`` does it: softly first (a ``KeyboardInterrupt`` in the task), then, for those
still running after ``soft_cancel_grace`` seconds (or at once on a second interrupt), by
killing their workers. Then one line says what was cancelled::

    cellray: interrupted: cancelled 4 tasks started by this cell (square x4)

Actor method calls are only cancelled softly: killing the worker would kill the actor,
which other cells use too. ``%%remote`` cells cancel their own task (``skip`` names them).
Other cells' tasks are never touched.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import runtime as rt
from kernel_ext.cell_hooks import CellHooks
from kernel_ext.routing import connection_id
from runtime import state
from runtime.exceptions import GetTimeoutError, TaskCancelledError, WorkerCrashedError

logger = logging.getLogger(__name__)

#: How long to wait for force-cancelled tasks to report back before saying so anyway.
FORCE_CANCEL_GRACE_S = 5.0


@dataclass(frozen=True)
class _Started:
    """A task the running cell started: its first result ref, held weakly."""

    name: str
    actor: bool
    ref: weakref.ReferenceType[Any]


class CellInterrupts(CellHooks):
    """Records the tasks each cell starts and cancels them when the cell is interrupted.

    ``register()`` hooks the shell's events, ``unregister()`` unhooks them (both
    idempotent). ``grace()`` gives the soft-cancel grace in seconds; ``skip(name)`` says
    which tasks someone else cancels (a ``%%remote`` cell's own task).
    """

    def __init__(self, shell: Any, grace: Callable[[], float],
                 skip: Callable[[str], bool] = lambda name: False) -> None:
        super().__init__(shell)
        self._grace = grace
        self._skip = skip
        self._lock = threading.Lock()
        #: The running cell's tasks by task id; None between cells.
        self._started: dict[str, _Started] | None = None
        self._connection: str | None = None

    # ---- hooks ----

    def register(self) -> None:
        self.register_cells()

    def unregister(self) -> None:
        self.unregister_cells()
        if self._connection is not None and connection_id() == self._connection:
            state.remove_submit_handler(self.on_submit)
        self._connection = None
        self._started = None

    def pre_run_cell(self, info: Any = None) -> None:
        """A cell starts: hook the current connection (made by %cluster or rt.init) if new."""
        connection = connection_id()
        if connection is not None and connection != self._connection:
            state.add_submit_handler(self.on_submit)
            self._connection = connection
        with self._lock:
            self._started = {}

    def on_submit(self, task: state.SubmittedTask) -> None:
        """The submit handler (on the submitting thread): the running cell started ``task``."""
        if not task.refs or self._skip(task.name):
            return
        with self._lock:
            if self._started is not None:
                self._started[task.task_id] = _Started(
                    task.name, task.actor_id is not None, weakref.ref(task.refs[0]))

    def post_run_cell(self, result: Any = None) -> None:
        """A cell ended: when a KeyboardInterrupt ended it, cancel what it left running."""
        with self._lock:
            started, self._started = self._started or {}, None
        if not isinstance(getattr(result, "error_in_exec", None), KeyboardInterrupt):
            return
        live = [(s, ref) for s in started.values() if (ref := s.ref()) is not None]
        if not live or not rt.is_initialized():
            return
        try:
            line = self._cancel(live)
        except KeyboardInterrupt:  # interrupted before anything was cancelled: leave it be
            return
        except Exception as e:  # noqa: BLE001 - the connection went away: nothing left to cancel
            logger.debug("cancelling an interrupted cell's tasks: %s", e)
            return
        if line:
            print(line)

    # ---- cancelling ----

    def _cancel(self, live: list[tuple[_Started, Any]]) -> str:
        _, pending = rt.wait([ref for _, ref in live], num_returns=len(live), timeout=0)
        waiting = set(pending)
        todo = [(s, ref) for s, ref in live if ref in waiting]
        if not todo:
            return ""
        refs = [ref for _, ref in todo]
        forced = False
        try:
            for ref in refs:
                rt.cancel(ref)
            _, left = rt.wait(refs, num_returns=len(refs), timeout=self._grace())
            if left:
                forced = self._force(todo, set(left))
        except KeyboardInterrupt:  # a second interrupt: kill them now
            forced = self._force(todo, set(refs))
        return summary(todo, [_outcome(ref) for ref in refs], forced)

    def _force(self, todo: list[tuple[_Started, Any]], left: set[Any]) -> bool:
        victims = [ref for s, ref in todo if ref in left and not s.actor]
        if not victims:
            return False
        for ref in victims:
            rt.cancel(ref, force=True)
        try:
            rt.wait(victims, num_returns=len(victims), timeout=FORCE_CANCEL_GRACE_S)
        except KeyboardInterrupt:
            pass
        return bool(victims)


def _outcome(ref: Any) -> str:
    """"cancelled", "running" (the cancel has not landed) or "ended" (finished or failed first)."""
    try:
        rt.get(ref, timeout=0)
    except GetTimeoutError:
        return "running"
    except (TaskCancelledError, WorkerCrashedError):
        return "cancelled"
    except Exception:  # noqa: BLE001 - it failed on its own before the cancel reached it
        return "ended"
    return "ended"


def summary(todo: list[tuple[_Started, Any]], outcomes: list[str], forced: bool) -> str:
    """The one line printed under the interrupted cell."""
    def names(which: str) -> str:
        counts = Counter(s.name for (s, _), o in zip(todo, outcomes, strict=True) if o == which)
        return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.most_common())

    n = Counter(outcomes)
    parts = []
    if n["cancelled"]:
        what = "task" if n["cancelled"] == 1 else "tasks"
        how = " (workers killed after the soft cancel)" if forced else ""
        parts.append(f"cancelled {n['cancelled']} {what} started by this cell ({names('cancelled')}){how}")
    if n["running"]:
        parts.append(f"{n['running']} still running ({names('running')})")
    if n["ended"]:
        parts.append(f"{n['ended']} ended before the cancel reached them")
    return "cellray: interrupted: " + "; ".join(parts)


#: The interrupt handler of each shell the extension is loaded in.
_installed: weakref.WeakKeyDictionary[Any, CellInterrupts] = weakref.WeakKeyDictionary()


def install(shell: Any, grace: Callable[[], float], skip: Callable[[str], bool]) -> None:
    """Cancel interrupted cells' tasks in ``shell`` (a second call does nothing)."""
    if shell in _installed:
        return
    handler = CellInterrupts(shell, grace, skip)
    handler.register()
    _installed[shell] = handler


def uninstall(shell: Any) -> None:
    """Undo ``install`` (nothing happens when it was not installed)."""
    handler = _installed.pop(shell, None)
    if handler is not None:
        handler.unregister()
