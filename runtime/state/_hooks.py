"""Driver hooks of ``runtime.state``: output and task-event handlers, the origin provider.

Part of the ``runtime.state`` package: import these names from there.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from runtime.api import _context
from runtime.protocol import common_pb2, node_pb2
from runtime.state._rows import SchedulerEvent

if TYPE_CHECKING:
    from runtime.api._client import CoreClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputLines:
    """Lines a remote task printed, as they reach the driver at the root of its task tree.

    Attributes
    ----------
    task_id : str
        Hex id of the task that printed them.
    name : str
        The task's function name.
    pid : int
        Process id of the worker.
    stream : str
        "stdout" or "stderr".
    lines : tuple[str, ...]
        The lines, without their newlines.
    origin : str
        The origin tag of the task tree (see ``set_origin_provider``); "" when untagged.
    """

    task_id: str
    name: str
    pid: int
    stream: Literal["stdout", "stderr"]
    lines: tuple[str, ...]
    origin: str

    @property
    def text(self) -> str:
        """The lines joined, each ending with a newline."""
        return "".join(line + "\n" for line in self.lines)

    @classmethod
    def from_proto(cls, log: node_pb2.LogLines) -> OutputLines:
        """Build from the ``LogLines`` a node sends its driver."""
        return cls(task_id=log.task_id.hex(), name=log.name, pid=log.pid,
                   stream="stderr" if log.stderr else "stdout", lines=tuple(log.lines),
                   origin=log.origin)


#: Per connection: the adapters installed in ``client.log_handlers`` / ``event_handlers``,
#: keyed by the user's function (so ``remove_*`` finds them).
_output_adapters: weakref.WeakKeyDictionary[CoreClient, dict[Callable[..., Any], Any]] = \
    weakref.WeakKeyDictionary()
_event_adapters: weakref.WeakKeyDictionary[CoreClient, dict[Callable[..., Any], Any]] = \
    weakref.WeakKeyDictionary()
_hooks_lock = threading.Lock()


def add_output_handler(fn: Callable[[OutputLines], object]) -> None:
    """Call ``fn(OutputLines)`` for the lines that tasks started by this driver print.

    The lines of every task in a task tree rooted at this driver arrive here, nested tasks
    included, each batch tagged with the tree's origin (see ``set_origin_provider``), as
    they are printed. ``fn`` runs on the connection's IO thread: it must return quickly and
    must not call ``runtime.get``, ``wait`` or this module's queries (hand the lines to
    another thread for anything slow). An exception it raises is logged.

    Adding the same ``fn`` twice has no effect. Handlers belong to the connection:
    ``runtime.shutdown()`` drops them. ``runtime.init(log_to_driver=False)`` turns off the
    default printing of the lines to this process's stdout and stderr.

    Examples
    --------
    >>> add_output_handler(lambda out: print(out.origin, out.text, end=""))  # doctest: +SKIP
    """
    _add_hook(fn, _output_adapters, "log_handlers", OutputLines.from_proto)


def remove_output_handler(fn: Callable[[OutputLines], object]) -> None:
    """Stop calling ``fn``; nothing happens when it was not added (or after shutdown)."""
    _remove_hook(fn, _output_adapters, "log_handlers")


def add_task_event_handler(fn: Callable[[SchedulerEvent], object]) -> None:
    """Call ``fn(SchedulerEvent)`` for each task warning the cluster sends this driver.

    An INFEASIBLE event says a task needs more resources than any node has (it waits until
    such a node joins). Runs on the connection's IO thread, like ``add_output_handler``'s
    handlers; adding ``fn`` twice has no effect; ``shutdown`` drops it.
    """
    _add_hook(fn, _event_adapters, "event_handlers", SchedulerEvent.from_proto)


def remove_task_event_handler(fn: Callable[[SchedulerEvent], object]) -> None:
    """Stop calling ``fn``; nothing happens when it was not added (or after shutdown)."""
    _remove_hook(fn, _event_adapters, "event_handlers")


def set_warning_handler(fn: Callable[[OutputLines], object] | None) -> None:
    """Show the task warnings the cluster sends this driver with ``fn`` instead of printing them.

    A warning (that a task needs more resources than any node has, say) comes as one stderr
    line of its task, tagged with the task's origin (see ``set_origin_provider``), so it can
    be shown under the cell that submitted the task. Each warning comes once per origin.
    ``fn`` runs on the connection's IO thread, like ``add_output_handler``'s handlers; when
    it raises, the warning is printed to stderr. ``None`` brings the printing back;
    ``shutdown`` drops ``fn``.
    """
    if fn is not None and not callable(fn):
        raise TypeError(f"set_warning_handler() expects a callable or None, got {type(fn).__name__}")
    events = _context.current().task_events
    if fn is None:
        events.warning_handler = None
        return

    def handler(lines: node_pb2.LogLines) -> None:
        fn(OutputLines.from_proto(lines))
    events.warning_handler = handler


def _add_hook(fn: Callable[[Any], object],
              registry: weakref.WeakKeyDictionary[CoreClient, dict[Callable[..., Any], Any]],
              attr: str, convert: Callable[[Any], Any]) -> None:
    if not callable(fn):
        raise TypeError(f"expected a callable handler, got {type(fn).__name__}")
    client = _context.current()

    def adapter(message: Any) -> None:
        fn(convert(message))

    with _hooks_lock:
        adapters = registry.setdefault(client, {})
        if fn in adapters:
            return
        adapters[fn] = adapter
        # Copy on write: the IO thread may be iterating the current list right now.
        setattr(client, attr, [*getattr(client, attr), adapter])


def _remove_hook(fn: Callable[[Any], object],
                 registry: weakref.WeakKeyDictionary[CoreClient, dict[Callable[..., Any], Any]],
                 attr: str) -> None:
    client = _context.peek()
    if client is None:
        return
    with _hooks_lock:
        adapter = registry.get(client, {}).pop(fn, None)
        if adapter is not None:
            setattr(client, attr, [h for h in getattr(client, attr) if h is not adapter])


@dataclass(frozen=True)
class SubmittedTask:
    """A task this driver just submitted, as ``add_submit_handler``'s handlers see it.

    Attributes
    ----------
    task_id : str
        Hex id of the task.
    name : str
        The function name, e.g. "f" or "Counter.inc".
    origin : str
        Its origin tag (see ``set_origin_provider``); "" when untagged.
    actor_id : str | None
        Hex id of the actor, for an actor method call.
    refs : tuple[ObjectRef, ...]
        The refs of its results (none for ``num_returns=0``). Keep them only weakly
        (``weakref.ref``): holding them keeps the results alive.
    """

    task_id: str
    name: str
    origin: str
    actor_id: str | None
    refs: tuple[Any, ...]


_submit_adapters: weakref.WeakKeyDictionary[CoreClient, dict[Callable[..., Any], Any]] = \
    weakref.WeakKeyDictionary()


def add_submit_handler(fn: Callable[[SubmittedTask], object]) -> None:
    """Call ``fn(SubmittedTask)`` for each task (or actor method call) this driver submits.

    Tasks submitted from inside tasks are not reported, nor actor creations. ``fn`` runs
    on the submitting thread, right after the task was sent: it must return quickly; an
    exception it raises is logged and the submission goes on. Adding ``fn`` twice has no
    effect; ``runtime.shutdown()`` drops it. The notebook extension records this way which
    tasks a cell started, to cancel them when the cell is interrupted.
    """
    def convert(spec: common_pb2.TaskSpec, refs: list[Any]) -> SubmittedTask:
        return SubmittedTask(task_id=spec.task_id.hex(), name=spec.name, origin=spec.origin,
                             actor_id=spec.actor_id.hex() or None, refs=tuple(refs))

    def call(spec: common_pb2.TaskSpec, refs: list[Any]) -> None:
        try:
            fn(convert(spec, refs))
        except Exception:  # a handler must not fail a submission that was already sent
            logger.exception("submit handler %r failed", fn)

    if not callable(fn):
        raise TypeError(f"expected a callable handler, got {type(fn).__name__}")
    client = _context.current()
    with _hooks_lock:
        adapters = _submit_adapters.setdefault(client, {})
        if fn in adapters:
            return
        adapters[fn] = call
        client.submit_handlers = [*client.submit_handlers, call]


def remove_submit_handler(fn: Callable[[SubmittedTask], object]) -> None:
    """Stop calling ``fn``; nothing happens when it was not added (or after shutdown)."""
    _remove_hook(fn, _submit_adapters, "submit_handlers")


def set_origin_provider(fn: Callable[[], str] | None) -> None:
    """Tag the work this driver submits with ``fn()``'s string, so its output finds its way back.

    ``fn`` is called once for each task submitted from the driver (not from inside
    tasks); the task, every task it submits in turn, and every ``OutputLines`` they print
    carry the string as ``origin``. This is how a notebook routes a task's output to the
    cell that started the work, even when it prints after the cell finished: the
    extension returns the id of the executing cell, and its output handler (see
    ``add_output_handler``) writes each batch of lines into the cell named by
    ``origin``. ``None`` removes the provider. ``fn`` runs on the submitting thread; an
    exception it raises is logged and the task goes untagged.

    Examples
    --------
    >>> set_origin_provider(lambda: current_cell_id())   # doctest: +SKIP
    """
    if fn is not None and not callable(fn):
        raise TypeError(f"set_origin_provider() expects a callable or None, got {type(fn).__name__}")
    _context.current().origin_provider = fn


def set_get_progress(fn: Callable[..., Any] | None) -> None:
    """Show progress while ``get`` waits on many refs: ``fn(refs, timeout=...)`` replaces it.

    ``rt.get`` on a list of refs, called in the main thread of a driver, then returns
    ``fn(refs, timeout=timeout)``, which must behave like ``get`` (same values, same
    errors). The notebook extension installs a progress bar that appears when a call
    blocks for more than a second. ``None`` removes it. Calls made by ``fn`` itself go
    straight to ``get``.
    """
    _context.progress_hook = fn
