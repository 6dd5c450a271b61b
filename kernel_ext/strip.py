"""A live progress strip under each cell whose tasks run on: ``CellStrips``.

Every task the kernel submits while a cell runs (``runtime.state.add_submit_handler``: any
``.remote()``, tasks and actor calls, from any thread) belongs to that cell, as for
``kernel_ext.interrupt``. When some of a cell's tasks are still unfinished a second
(``cell_work.SHOW_AFTER_S``) after they were submitted, while the cell runs or after it returned, a
one-line strip appears in the cell's output (``widgets.cell_strip``)::

    6 tasks: 2 done · 2 running · 2 pending · 0 failed     live, at most 4 updates a second
    6 tasks: 5 done · 1 failed (in 3.2 s)                  once they are all over

Then the live widget is closed and that last picture stays, as plain HTML and text.
Cells that start no task get no strip, and neither do cells whose tasks were all over
within that second (the threshold of ``rt.get``'s bar): a strip is for work that takes a
while. The own task of a ``%%remote`` cell is not counted (``skip``): the cell is that task.

One bar per cell: ``rt.get`` on many refs shows its own bar once it blocks for a second
(``widgets.progress``). Whichever comes first keeps the cell. While a get's bar is up the
cell's strip waits, and it does not appear at all when the get collected the cell's work.
Once a strip is up, a get on refs of that cell's tasks shows no second bar: the strip says
more (running, pending, failed) and stays after the get returns. A get on other refs (an
earlier cell's) still shows its bar: those tasks' strip is under another cell.

Where the numbers come from:

- The GCS task rows, through one ``runtime.state.subscribe(["tasks"])`` opened when a
  strip is first due and closed when no cell is watched any more; only the rows of
  watched tasks are kept. They tell running from pending, and done from failed.
- The driver's own knowledge of its results, asked on the kernel's main thread only: at
  the end of each cell, and when a ``rt.get`` returns. A cell whose tasks are all ready
  when it ends needs no strip and no subscription. Refs are held weakly, as in
  ``interrupt``. (Another thread must not call ``rt.wait``: racing ``rt.shutdown()`` it
  would start a new cluster.)

What a cell's tasks count as, and when its strip shows, updates, ends or is not needed,
is decided by the pure ``kernel_ext.cell_work``; this module only listens and draws. One
background thread per kernel ticks every ``TICK_S`` while any cell is watched. It shows
strips under their own cell (the display publisher's per-thread parent), updates
them, and ends when no cell is left: the tasks are over, ``rt.shutdown()`` or ``%cluster
stop`` ran (strips then end with "cluster disconnected"), or the extension was unloaded.
It never waits on the kernel's main thread, and holds no lock while sending.

Off switches, for the cells run afterwards: ``%config CellrayMagics.progress_strip =
False``, or the environment variable ``CELLRAY_PROGRESS_STRIP=0`` (read at each cell, so
``%env`` works; either one turns strips off). Only ipykernel >= 7 (per-thread display
parents) shows strips; a terminal IPython has nowhere to draw them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import runtime as rt
from kernel_ext.cell_hooks import CellHooks
from kernel_ext.cell_work import SHOW_AFTER_S, CellWork, Step, TaskRow, next_step
from kernel_ext.routing import connection_id
from runtime import state
from widgets.cell_strip import CellStrip, StripCounts

logger = logging.getLogger(__name__)

#: What the thread does with a cell: ``next_step``'s steps, or end its strip because the
#: cluster connection it was made on is gone.
Action = Step | Literal["disconnected"]

#: The environment variable that turns strips off ("0", "false", "off", "no").
ENV = "CELLRAY_PROGRESS_STRIP"
_OFF = ("0", "false", "off", "no")
_ON = ("1", "true", "on", "yes", "")
#: Seconds between two looks at the watched cells: at most 4 updates a second per strip.
TICK_S = 0.25
#: How long unloading the extension waits for the strip thread to end.
JOIN_S = 5.0
#: How long the tasks subscription stays open with nothing to follow (a long cell whose
#: tasks are over may start more: no fresh snapshot of the tasks table for each).
FEED_LINGER_S = 30.0


def env_allows(value: str | None) -> bool | None:
    """Whether a ``CELLRAY_PROGRESS_STRIP`` value lets strips show; None when it is neither
    an on value (unset, "1", "true", "on", "yes") nor an off value ("0", "false", "off", "no")."""
    v = (value or "").strip().lower()
    if v in _OFF:
        return False
    return True if v in _ON else None


@dataclass(eq=False)
class _Cell:
    """A cell whose tasks are watched."""

    header: dict[str, Any]
    connection: str
    work: CellWork = field(default_factory=CellWork)
    ended: bool = False
    #: Gets showing their own bar in this cell right now.
    getting: int = 0
    #: Decided to show (under the lock); ``strip`` and ``handle`` follow outside it.
    shown: bool = False
    strip: CellStrip | None = None
    handle: Any = None


@dataclass(frozen=True)
class StripStatistics:
    """A snapshot of ``CellStrips``: cells watched, strips on screen, tasks, the thread."""

    watched: int
    shown: int
    tasks: int
    thread_alive: bool


class _Feed:
    """One subscription to the GCS tasks table, and whether its snapshot is in."""

    def __init__(self, store: Callable[[str, TaskRow], None]) -> None:
        self._store = store
        self.synced = threading.Event()
        self.sub = state.subscribe(["tasks"], self._on_change)

    def _on_change(self, change: state.Change) -> None:
        if change.snapshot_done:
            self.synced.set()
        elif change.reset:
            self.synced.clear()
        elif isinstance(change.value, state.TaskState):
            self._store(change.key, TaskRow(change.value.state, change.value.end_time))


class CellStrips(CellHooks):
    """Shows a live progress strip under each cell whose tasks run on (see the module).

    ``register()`` hooks the shell's events, ``unregister()`` unhooks them and stops the
    thread (both idempotent). ``enabled()`` says whether new cells get strips (the magics'
    ``progress_strip``); ``skip(name)`` names tasks not to count (a ``%%remote`` cell's own).
    """

    def __init__(self, shell: Any, enabled: Callable[[], bool],
                 skip: Callable[[str], bool] = lambda name: False, delay: float = SHOW_AFTER_S) -> None:
        super().__init__(shell)
        self.delay = delay
        self._enabled = enabled
        self._skip = skip
        self._lock = threading.Lock()
        self._current: _Cell | None = None
        #: Cells with tasks, watched until their strip is finished or forgotten.
        self._cells: list[_Cell] = []
        #: The cell of each watched task (where its rows go).
        self._owner: dict[str, _Cell] = {}
        self._hooked: str | None = None
        #: The connection as of the last cell boundary (read on the main thread only).
        self._connection: str | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._complained: str | None = None

    # ---- hooks (main thread, but on_submit: any thread) ----

    def register(self) -> None:
        self.register_cells()

    def unregister(self) -> None:
        self.unregister_cells()
        if self._hooked is not None and connection_id() == self._hooked:
            state.remove_submit_handler(self.on_submit)
        self._hooked = None
        with self._lock:
            self._current, thread = None, self._thread
        self._stop.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_S)

    def pre_run_cell(self, info: Any = None) -> None:
        """A cell starts: hook a new connection; watch the cell if strips are on."""
        connection = connection_id()
        if connection is not None and connection != self._hooked:
            state.add_submit_handler(self.on_submit)
            self._hooked = connection
        self._connection = connection
        header = _cell_header(self.shell) if connection is not None and self._wanted() else None
        with self._lock:
            self._current = _Cell(header, connection) if header is not None and connection else None

    def on_submit(self, task: state.SubmittedTask) -> None:
        """The submit handler (on the submitting thread): the running cell started ``task``."""
        if self._skip(task.name) or self._stop.is_set():
            return
        first = task.refs[0] if task.refs else None
        ref = first if isinstance(first, rt.ObjectRef) else None  # a generator's readiness is not the task's
        thread = None
        with self._lock:
            cell = self._current
            if cell is None:
                return
            cell.work.add(task.task_id, ref, time.monotonic(), time.time())
            self._owner[task.task_id] = cell
            if cell not in self._cells:
                self._cells.append(cell)
            if self._thread is None:
                thread = self._thread = threading.Thread(target=self._run, name="cellray-cell-strips",
                                                         daemon=True)
        if thread is not None:
            thread.start()

    def post_run_cell(self, result: Any = None) -> None:
        """A cell ended: note which of the watched tasks' results are here, then let go of it."""
        self._connection = connection = connection_id()
        self._check_ready(connection)
        with self._lock:
            cell, self._current = self._current, None
            if cell is not None:
                cell.ended = True
        self._wake.set()

    def get_progress(self, bar: Callable[..., Any]) -> Callable[..., Any]:
        """``rt.get``'s progress hook: ``bar`` (``get_with_progress``), but no second bar
        for tasks whose strip is up; while ``bar`` runs the cell's strip waits."""
        def get(refs: list[Any], timeout: float | None = None) -> Any:
            ids = [str(r.task_id()) for r in refs]
            with self._lock:
                cell = self._current
                plain = cell is not None and cell.shown and cell.work.covers(ids)
                if cell is not None and not plain:
                    cell.getting += 1
            ok = False
            try:
                values = rt.get(refs, timeout=timeout) if plain else bar(refs, timeout=timeout)
                ok = True
                return values
            finally:
                if cell is not None:
                    with self._lock:
                        if ok:  # before the strip may go on: the get collected these
                            cell.work.mark_ready(ids, time.monotonic())
                        if not plain:
                            cell.getting -= 1
        return get

    def statistics(self) -> StripStatistics:
        with self._lock:
            thread = self._thread
            return StripStatistics(watched=len(self._cells), shown=sum(c.shown for c in self._cells),
                                   tasks=sum(len(c.work.tasks) for c in self._cells),
                                   thread_alive=thread is not None and thread.is_alive())

    def _wanted(self) -> bool:
        """Whether new cells get strips: a kernel that can draw them, the trait, the env var."""
        pub = getattr(self.shell, "display_pub", None)
        if getattr(self.shell, "kernel", None) is None or not hasattr(pub, "set_thread_parent"):
            return False
        if not self._enabled():
            return False
        value = os.environ.get(ENV)
        allowed = env_allows(value)
        if allowed is None:
            if value != self._complained:
                self._complained = value
                print(f"cellray: {ENV}={value!r} is neither on ({', '.join(_ON[:-1])}) nor off "
                      f"({', '.join(_OFF)}); progress strips stay on.", file=sys.stderr)
            return True
        return allowed

    def _check_ready(self, connection: str | None) -> None:
        """Ask the driver which watched results are here (main thread: see the module)."""
        if connection is None:
            return
        with self._lock:
            todo = [(c, c.work.waiting_refs()) for c in self._cells if c.connection == connection]
        for cell, refs in todo:
            if not refs:
                continue
            try:
                ready, _ = rt.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            except Exception as e:  # noqa: BLE001 - the connection went away: the thread ends it
                logger.debug("checking the results of a cell's tasks: %s", e)
                return
            with self._lock:
                cell.work.mark_ready((str(r.task_id()) for r in ready), time.monotonic())

    # ---- the thread ----

    def _run(self) -> None:
        feed: _Feed | None = None
        needed_at = 0.0
        try:
            while not self._stop.is_set():
                with self._lock:
                    if not self._cells:
                        self._thread = None
                        return
                if feed is not None and not feed.sub.active:
                    feed = None  # its connection was shut down
                steps = self._decide(feed is not None and feed.synced.is_set())
                now = time.monotonic()
                if any(_needs_rows(cell, step, counts) for cell, step, counts, _ in steps):
                    needed_at = now
                    if feed is None:
                        feed = self._subscribe()
                elif feed is not None and now - needed_at > FEED_LINGER_S:
                    feed.sub.close()  # nothing to follow for a while (a long cell's work is over)
                    feed = None
                for cell, step, counts, elapsed in steps:
                    self._apply(cell, step, counts, elapsed)
                self._wake.wait(TICK_S)
                self._wake.clear()
            self._end_all("no longer watched")  # the extension was unloaded
        except Exception:  # a bug here must not leave strips half drawn: end them
            logger.exception("the progress strips' thread failed")
            self._end_all("no longer watched")
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
            if feed is not None:
                feed.sub.close()

    def _decide(self, synced: bool) -> list[tuple[_Cell, Action, StripCounts, float]]:
        """Each watched cell's step, with its counts (and, for a last picture, the time taken)."""
        connected = rt.is_initialized()  # only peeks: it never connects
        now = time.monotonic()
        steps: list[tuple[_Cell, Action, StripCounts, float]] = []
        with self._lock:
            for cell in self._cells:
                step: Action
                if not connected or cell.connection != self._connection:
                    step = "disconnected"
                    cell.work.observe(now)
                else:
                    step = next_step(cell.work, now, ended=cell.ended, shown=cell.shown,
                                     holding_off=cell.getting > 0, synced=synced, delay=self.delay)
                    cell.shown = cell.shown or step == "show"
                ending = step in ("finish", "disconnected")
                steps.append((cell, step, cell.work.counts(), cell.work.elapsed(now) if ending else 0.0))
        return steps

    def _subscribe(self) -> _Feed | None:
        try:
            return _Feed(self._store)
        except Exception as e:  # noqa: BLE001 - shut down meanwhile, or the GCS is away: next tick
            logger.debug("subscribing to the tasks table for the progress strips: %s", e)
            return None

    def _store(self, task_id: str, row: TaskRow) -> None:
        with self._lock:
            cell = self._owner.get(task_id)
            if cell is not None:
                cell.work.saw_row(task_id, row)

    def _apply(self, cell: _Cell, step: Action, counts: StripCounts, elapsed: float) -> None:
        try:
            if step == "show":
                cell.strip = CellStrip(counts)
                with _under(self.shell, cell.header):
                    cell.handle = _display(cell.strip)
            elif step == "update" and cell.strip is not None:
                cell.strip.show(counts)
            elif step == "finish":
                self._end(cell, counts, elapsed, "")
            elif step == "disconnected":
                self._end(cell, counts, elapsed, "cluster disconnected")
            elif step == "forget":
                self._forget(cell)
        except Exception as e:  # noqa: BLE001 - the kernel is going away, or the comm broke: let go
            logger.debug("progress strip of a cell (%s): %s", step, e)
            self._forget(cell)
            strip, cell.strip = cell.strip, None
            if strip is not None:
                with contextlib.suppress(Exception):
                    strip.close()

    def _end(self, cell: _Cell, counts: StripCounts, elapsed: float, ended: str) -> None:
        """Show the final line, put its static picture in the widget's place, close the widget."""
        strip, cell.strip = cell.strip, None
        try:
            if strip is not None:
                strip.show(counts, elapsed=elapsed, ended=ended if counts.unfinished else "")
                if cell.handle is not None:
                    with _under(self.shell, cell.header):
                        cell.handle.update(strip.static(), raw=True)
        finally:
            self._forget(cell)
            if strip is not None:
                strip.close()

    def _end_all(self, ended: str) -> None:
        now = time.monotonic()
        with self._lock:
            cells = [(c, c.work.counts(), c.work.elapsed(now)) for c in self._cells]
        for cell, counts, elapsed in cells:
            try:
                self._end(cell, counts, elapsed, ended)
            except Exception as e:  # noqa: BLE001 - best effort: the kernel may be going away
                logger.debug("ending a progress strip: %s", e)

    def _forget(self, cell: _Cell) -> None:
        with self._lock:
            if cell in self._cells:
                self._cells.remove(cell)
            for tid in cell.work.tasks:
                if self._owner.get(tid) is cell:
                    del self._owner[tid]


def _needs_rows(cell: _Cell, step: Action, counts: StripCounts) -> bool:
    """Whether this cell needs the GCS task rows now: a strip is due or shown and not over."""
    return step in ("sync", "show") or (step == "update" and (bool(counts.unfinished) or cell.ended))


def _cell_header(shell: Any) -> dict[str, Any] | None:
    """The header of the request the kernel is executing (the cell), or None."""
    try:
        parent = shell.kernel.get_parent()
    except Exception:  # noqa: BLE001 - any ipykernel (or none with get_parent): no header
        return None
    header = parent.get("header") if isinstance(parent, dict) else None
    return dict(header) if header else None


@contextlib.contextmanager
def _under(shell: Any, header: dict[str, Any]) -> Iterator[None]:
    """Within the block, displays from this thread go to the cell of ``header``."""
    pub = shell.display_pub
    token = pub.set_thread_parent(header)
    try:
        yield
    finally:
        pub.reset_thread_parent(token)


def _display(strip: CellStrip) -> Any:
    from IPython.display import display

    return display(strip, display_id=True)


#: The strips of each shell the extension is loaded in.
_installed: weakref.WeakKeyDictionary[Any, CellStrips] = weakref.WeakKeyDictionary()


def install(shell: Any, enabled: Callable[[], bool], skip: Callable[[str], bool]) -> None:
    """Show progress strips in ``shell`` (a second call does nothing)."""
    if shell in _installed:
        return
    strips = CellStrips(shell, enabled, skip)
    strips.register()
    _installed[shell] = strips


def uninstall(shell: Any) -> None:
    """Undo ``install``: live strips end with their last picture (nothing happens when it
    was not installed)."""
    strips = _installed.pop(shell, None)
    if strips is not None:
        strips.unregister()


def installed(shell: Any) -> CellStrips | None:
    """The strips of ``shell``, when the extension is loaded there."""
    return _installed.get(shell)


def get_progress(shell: Any, bar: Callable[..., Any]) -> Callable[..., Any]:
    """``rt.get``'s progress hook for ``shell``: ``bar``, minus the bars a strip already is."""
    strips = _installed.get(shell)
    return bar if strips is None else strips.get_progress(bar)
