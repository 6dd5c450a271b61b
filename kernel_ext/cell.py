"""Running a cell on the cluster: what to ship, submitting it, waiting, cancelling.

``prepare`` parses the cell (a ``SyntaxError`` stops everything here, with the cell's own
line), finds the names it reads from the notebook (``names.free_names``) and packs them:
modules as imports (re-imported on the worker), everything else checked with cloudpickle
*before* anything is submitted, so an unpicklable name fails with its name in the message.
``submit`` runs ``kernel_ext.worker.run_cell`` as a task (or ``NotebookSession.run`` on a session
actor) and returns a ``RemoteCell``: the future of the cell, blocking or not.
"""

from __future__ import annotations

import ast
import threading
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
from IPython.core.error import UsageError

import runtime as rt
from kernel_ext import display, worker
from kernel_ext.names import free_names
from runtime import state as cluster_state
from runtime.exceptions import GetTimeoutError, TaskCancelledError, TaskError, WorkerCrashedError

#: A shipped name larger than this (pickled) gets a warning suggesting ``rt.put``
#: (``CellrayMagics.large_value_warning`` overrides it).
LARGE_SHIPMENT_BYTES = 10_000_000
#: After an interrupt, how long the soft cancel (KeyboardInterrupt in the cell) may take
#: before the worker is killed (``CellrayMagics.soft_cancel_grace`` overrides it).
SOFT_CANCEL_GRACE_S = 3.0
#: How long to wait for the cancelled task to report back before saying so anyway.
FORCE_CANCEL_GRACE_S = 5.0

#: The task every stateless ``%%remote`` cell runs. A cell that crashes its worker is not
#: re-run behind the user's back: no retries.
_RUN_CELL = rt.remote(max_retries=0)(worker.run_cell)
#: The actor class behind ``--session``.
SESSION_CLASS = rt.remote(worker.NotebookSession)
#: Task names whose output is a cell's own (printed without a ``(name pid=...)`` prefix).
SESSION_TASK_NAMES = ("NotebookSession.run", "NotebookSession.push", "NotebookSession.pull")


# ---- what the cell needs ------------------------------------------------------------------


@dataclass
class Shipment:
    """The notebook names a cell reads: values to pickle, modules to import on the worker."""

    values: dict[str, Any] = field(default_factory=dict)
    imports: dict[str, str] = field(default_factory=dict)
    #: Pickled size of each value, in bytes.
    sizes: dict[str, int] = field(default_factory=dict)

    def large(self, limit: int = LARGE_SHIPMENT_BYTES) -> dict[str, int]:
        """The values bigger than ``limit`` bytes, pickled."""
        return {k: n for k, n in self.sizes.items() if n > limit}


@dataclass(frozen=True)
class PreparedCell:
    source: str
    filename: str
    shipment: Shipment


class _CountingSink:
    """A file that only counts what is written (to measure a pickle without keeping it)."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.n += n
        return n


def pickled_size(value: Any) -> int:
    """The size of ``value`` pickled with cloudpickle; raises what pickling raises."""
    sink = _CountingSink()
    cloudpickle.CloudPickler(sink, protocol=5).dump(value)
    return sink.n


def _is_hidden(name: str, value: Any, hidden: Mapping[str, Any]) -> bool:
    """IPython's own names (In, Out, get_ipython, exit, ...) unless the user rebound them."""
    if name.startswith("__") and name.endswith("__"):
        return True
    return name in hidden and hidden[name] is value


def _importable(module: types.ModuleType) -> bool:
    import sys

    name = getattr(module, "__name__", "")
    has_spec = getattr(module, "__spec__", None) is not None
    return bool(name) and has_spec and sys.modules.get(name) is module


def ship(names: Sequence[str], user_ns: Mapping[str, Any], hidden: Mapping[str, Any] | None = None,
         *, what: str = "%%remote") -> Shipment:
    """Pack the ``names`` that ``user_ns`` defines; raise ``UsageError`` for one that cannot go."""
    hidden = hidden or {}
    out = Shipment()
    for name in names:
        if name not in user_ns:
            continue
        value = user_ns[name]
        if _is_hidden(name, value, hidden):
            continue
        if isinstance(value, types.ModuleType) and _importable(value):
            out.imports[name] = value.__name__
            continue
        try:
            out.sizes[name] = pickled_size(value)
        except Exception as e:  # noqa: BLE001 - pickling a user's object can raise anything
            raise UsageError(
                f"{what} cannot send {name!r} ({type(value).__name__}) to the cluster: it cannot "
                f"be pickled ({type(e).__name__}: {e}). Nothing was run. Create it inside the "
                f"cell instead, or give the cell something picklable that it can rebuild "
                f"{name!r} from.") from None
        out.values[name] = value
    return out


def prepare(source: str, filename: str, user_ns: Mapping[str, Any],
            hidden: Mapping[str, Any] | None = None) -> PreparedCell:
    """Parse the cell and pack what it reads.

    Raises SyntaxError (naming the cell's line) or UsageError (a name that cannot be sent).
    """
    worker.register_source(filename, source)  # so a SyntaxError (and %debug) shows the line
    tree = ast.parse(source, filename, "exec")
    compile(tree, filename, "exec", dont_inherit=True)  # errors ast misses: 'return' outside def
    return PreparedCell(source, filename, ship(free_names(tree), user_ns, hidden))


# ---- sessions -----------------------------------------------------------------------------


def session_namespace() -> str:
    """Sessions are private to this kernel: their names live in a namespace of its job."""
    return f"kernel_ext-{rt.get_runtime_context().get_job_id()}"


def session_handle(name: str, options: dict[str, Any]) -> rt.ActorHandle:
    """The session actor called ``name``, created on first use with ``options`` (resources)."""
    opts = {k: v for k, v in options.items() if k in ("num_cpus", "num_gpus", "resources")}
    handle: rt.ActorHandle = SESSION_CLASS.options(
        name=name, namespace=session_namespace(), get_if_exists=True, **opts).remote()
    return handle


# ---- the future of a remote cell ----------------------------------------------------------


class RemoteCell:
    """A cell submitted to the cluster: ``result()``, ``done()``, ``cancel()``; its repr is live.

    A blocking ``%%remote`` waits with ``wait_here()`` (an interrupt cancels the work); a
    ``--no-block`` one returns this object at once and a background thread collects the
    result, assigns the ``--pull`` names and refreshes the object's display when it ends.
    """

    def __init__(self, ref: rt.ObjectRef, label: str, *, origin: str = "",
                 assign: Callable[[dict[str, Any]], None] | None = None,
                 refresh: Callable[[RemoteCell], None] | None = None,
                 soft_cancel_grace: float = SOFT_CANCEL_GRACE_S,
                 task_names: Sequence[str] = ()) -> None:
        #: The ObjectRef of ``(value, pulled names)``.
        self.ref = ref
        #: How the cell is called in messages: "cell [5]", or the --name given.
        self.label = label
        self.origin = origin
        self.task_id = ref.task_id()
        self.submitted = time.monotonic()
        self.ended: float | None = None
        self._assign = assign
        self._refresh = refresh
        self._soft_cancel_grace = soft_cancel_grace
        #: Names of the task that is the cell (its errors are "the cell raised").
        self._task_names = tuple(task_names)
        self._done = threading.Event()
        self._state = "submitted"
        self._value: Any = None
        self._error: BaseException | None = None
        self.display_id = f"cellray-{self.task_id}"

    # ---- waiting ----

    def wait_here(self) -> Any:
        """Wait in this thread (the kernel's): the cell's value. Ctrl-C / interrupt cancels it."""
        try:
            outcome = rt.get(self.ref)
        except KeyboardInterrupt:
            return self._cancel_after_interrupt()
        except BaseException as e:  # noqa: BLE001 - whatever the cell raised is its outcome
            self._finish_error(e)
            raise self._user_error() from None
        return self._finish_value(outcome)

    def watch(self) -> RemoteCell:
        """Collect the result on a background thread (``--no-block``); returns self."""
        threading.Thread(target=self._watch, name=f"cellray-{self.label}", daemon=True).start()
        return self

    def _watch(self) -> None:
        try:
            outcome = rt.get(self.ref)
        except BaseException as e:  # noqa: BLE001 - on the watcher thread, every error is the outcome
            self._finish_error(e)
        else:
            try:
                self._finish_value(outcome)
            except BaseException as e:  # noqa: BLE001 - e.g. assigning pulled names failed
                self._finish_error(e)
        if self._refresh is not None:
            self._refresh(self)

    def _finish_value(self, outcome: tuple[Any, dict[str, Any]]) -> Any:
        value, pulled = outcome
        if self._assign is not None and pulled:
            self._assign(pulled)
        self._value, self._state, self.ended = value, "finished", time.monotonic()
        self._done.set()
        return value

    def _finish_error(self, e: BaseException) -> None:
        cancelled = isinstance(e, TaskCancelledError)
        self._error, self.ended = e, time.monotonic()
        self._state = "cancelled" if cancelled else "failed"
        self._done.set()

    def _user_error(self) -> BaseException:
        """The error to raise in the kernel: the remote exception, shown with the cell's lines."""
        err = self._error
        assert err is not None
        if isinstance(err, TaskError):
            lines = display.remote_error_lines(self.label, err, self._task_names)
            cause = err.cause
            if cause is not None:
                shown = display.with_rendering(cause, lines)
                if hasattr(shown, "_render_traceback_"):
                    return shown
            return display.with_rendering(err, lines)
        if isinstance(err, TaskCancelledError):
            line = f"TaskCancelledError: {self.label} (task {self.task_id[:12]}) was cancelled."
            return display.with_rendering(err, [line])
        return err

    def _cancel_after_interrupt(self) -> Any:
        """Soft cancel; force it when the cell does not stop in time or on a second interrupt.

        Raises a KeyboardInterrupt that IPython shows as one line saying what was cancelled
        (or the cell's own error, if it failed first); returns the cell's value if it
        finished before the cancel reached it.
        """
        forced = False
        rt.cancel(self.ref)
        try:
            ready, _ = rt.wait([self.ref], timeout=self._soft_cancel_grace)
            if not ready:
                forced = self._force_cancel()
        except KeyboardInterrupt:
            forced = self._force_cancel()
        try:
            outcome = rt.get(self.ref, timeout=0)
        except GetTimeoutError:  # the cancel has not landed (yet): say so rather than pretend
            line = display.still_running_line(self.label, self.task_id, forced)
            raise display.with_rendering(KeyboardInterrupt(line), [line]) from None
        except (TaskCancelledError, WorkerCrashedError) as e:
            self._finish_error(TaskCancelledError(str(e), task_id=self.task_id))
            line = display.cancelled_line(self.label, self.task_id, forced)
            raise display.with_rendering(KeyboardInterrupt(line), [line]) from None
        except KeyboardInterrupt:
            line = display.still_running_line(self.label, self.task_id, forced)
            raise display.with_rendering(KeyboardInterrupt(line), [line]) from None
        except BaseException as e:  # noqa: BLE001 - it failed on its own before the cancel reached it
            self._finish_error(e)
            raise self._user_error() from None
        return self._finish_value(outcome)  # it finished before the cancel reached it

    def _force_cancel(self) -> bool:
        rt.cancel(self.ref, force=True)
        try:
            rt.wait([self.ref], timeout=FORCE_CANCEL_GRACE_S)
        except KeyboardInterrupt:
            pass
        return True

    # ---- the future API ----

    def done(self) -> bool:
        """True once the cell finished, failed or was cancelled."""
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Any:
        """The cell's value (waiting up to ``timeout`` seconds); raises the cell's error."""
        if not self._done.wait(timeout):
            raise GetTimeoutError(f"{self.label} is still running after {timeout} s", task_id=self.task_id)
        if self._error is not None:
            raise self._user_error()
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The cell's error (None when it succeeded), waiting like ``result``."""
        if not self._done.wait(timeout):
            raise GetTimeoutError(f"{self.label} is still running after {timeout} s", task_id=self.task_id)
        return self._error

    def cancel(self, force: bool = False) -> bool:
        """Ask the cluster to stop the cell; False when it already ended."""
        if self.done():
            return False
        rt.cancel(self.ref, force=force)
        return True

    @property
    def state(self) -> str:
        """submitted, queued, running, finished, failed or cancelled."""
        if self.done():
            return self._state
        try:
            row = cluster_state.get_task(self.task_id)
        except Exception:  # noqa: BLE001 - disconnected, or the GCS is busy: a repr must not raise
            row = None
        return row.state.lower() if row is not None else "submitted"

    def __repr__(self) -> str:
        st = self.state
        if st == "finished":
            value = repr(self._value)
            value = value if len(value) <= 60 else value[:57] + "..."
            what = f"finished in {self.ended - self.submitted:.1f} s: {value}"  # type: ignore[operator]
        elif st == "failed":
            err = self._error
            name = getattr(err, "cause_type_name", "") or type(err).__name__
            first = str(getattr(err, "cause", None) or err).strip().splitlines()[:1]
            what = f"failed with {name}"
            if first and isinstance(err, TaskError):
                what += f": {first[0]}"
            what += "; .result() raises it"
        elif st == "cancelled":
            what = "cancelled"
        else:
            what = f"{st} for {time.monotonic() - self.submitted:.1f} s"
        return f"<RemoteCell {self.label}: {what}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        return display.future_bundle(repr(self), self._state if self.done() else "running")

    def _ipython_display_(self) -> None:
        from IPython.display import display as show

        show(self._repr_mimebundle_(), raw=True, display_id=self.display_id)


def run_options(cpus: float | None, gpus: float | None, resources: dict[str, float] | None,
                name: str) -> dict[str, Any]:
    """``.options(...)`` for the task (or session actor) that runs a cell."""
    opts: dict[str, Any] = {"name": name}
    if cpus is not None:
        opts["num_cpus"] = cpus
    if gpus is not None:
        opts["num_gpus"] = gpus
    if resources:
        opts["resources"] = resources
    return opts


def submit(cell: PreparedCell, options: dict[str, Any], pull: Sequence[str],
           session: rt.ActorHandle | None = None) -> rt.ObjectRef:
    """Start the cell on the cluster; the ObjectRef of ``(value, pulled values)``."""
    s = cell.shipment
    args = (cell.source, cell.filename, s.values, s.imports, tuple(pull))
    ref: rt.ObjectRef
    if session is not None:
        ref = session.run.remote(*args)
        return ref
    try:
        fn = _RUN_CELL.options(**options)
    except (TypeError, ValueError) as e:
        raise UsageError(f"%%remote: {e}") from None
    ref = fn.remote(*args)
    return ref
