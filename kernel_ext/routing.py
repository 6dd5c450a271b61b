"""Output routing: what remote work prints appears under the cell that started it.

Every task submitted from the kernel is tagged with an *origin*: the ``msg_id`` of the
``execute_request`` running at that moment (``runtime.state.set_origin_provider``). Nested
tasks inherit the tag, and the lines they print come back tagged with it
(``runtime.state.add_output_handler``). The handler runs on the connection's IO thread; it
looks up the parent header of the origin's cell and writes the lines to the kernel's
stdout/stderr *with that parent*, so the frontend files them under that cell, even after
the cell finished and while another cell runs.

Warnings the cluster sends about a task (``Warning: Task train() needs {GPU: 4} ...``) take
the same way (``runtime.state.set_warning_handler``): they come tagged with the origin of
the task they are about, and are written to stderr under the cell that submitted it, not
under the cell that started the cluster (whose thread the connection's IO thread is).

A driver's lines about a GCS outage (``runtime.api._gcs_link.set_user_notifier``) go to the
cell that waits for the GCS: "GCS reconnecting… ..." once, when a call of the running cell
first waits, and "... is back after N s" under the same cell. With no cell running (a
dashboard asking the GCS while the kernel is idle) nobody is told: the dashboard shows
the outage, and the next cell that waits is told.

In ipykernel (>= 7) the streams and the display publisher take a per-thread parent
(``set_thread_parent``); older ipykernels get the message sent directly on iopub. In a
plain IPython terminal there is nowhere else to put the lines: they are printed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from runtime import state
from runtime.api._gcs_link import set_user_notifier
from runtime.gcs.reconnect import RECONNECTING

logger = logging.getLogger(__name__)

#: Cells (and remote-cell task ids) remembered for routing; the oldest are forgotten first.
MAX_REMEMBERED = 4096


class _Bounded(OrderedDict[str, Any]):
    def remember(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_REMEMBERED:
            self.popitem(last=False)


class OutputRouter:
    """Tags submissions with the current cell and writes remote output into that cell.

    ``install()`` hooks the current runtime connection; ``uninstall()`` unhooks it.
    Tasks that *are* a cell (``%%remote``, marked by name with ``mark_cell_task``) print
    the cell's own output: their lines get no ``(name pid=...)`` prefix.
    """

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.kernel: Any = getattr(shell, "kernel", None)
        # The kernel's own streams, captured now: a cell may redirect sys.stdout later.
        self._streams: dict[str, Any] = {"stdout": sys.stdout, "stderr": sys.stderr}
        self._cells: _Bounded = _Bounded()
        self._own_names: _Bounded = _Bounded()
        self._lock = threading.Lock()
        self._connection: str | None = None
        #: The running cell's parent header ({} outside a kernel), None between cells.
        self._running: dict[str, Any] | None = None
        #: The cell told that a call waits for the GCS (it hears that the GCS is back).
        self._told: dict[str, Any] | None = None
        self._following = False

    # ---- hooking the connection ----

    @property
    def installed(self) -> bool:
        return self._connection is not None

    def install(self) -> None:
        """Route the current connection's output (idempotent)."""
        connection = connection_id()
        if connection is None or connection == self._connection:
            return
        state.add_output_handler(self.on_output)
        state.set_warning_handler(self.on_warning)
        state.set_origin_provider(self.current_origin)
        set_user_notifier(self.on_gcs_line)
        self._connection = connection
        if not self._following:  # installed from a cell (%cluster start): it runs now
            self._running = self.current_header() or {}
            self.shell.events.register("pre_run_cell", self._cell_starts)
            self.shell.events.register("post_run_cell", self._cell_ends)
            self._following = True

    def uninstall(self) -> None:
        """Stop routing (the connection may already be gone: nothing to undo then)."""
        if self._connection is not None and connection_id() == self._connection:
            state.remove_output_handler(self.on_output)
            state.set_warning_handler(None)
            state.set_origin_provider(None)
        if self._connection is not None:
            set_user_notifier(None)
        self._connection = None
        if self._following:
            self.shell.events.unregister("pre_run_cell", self._cell_starts)
            self.shell.events.unregister("post_run_cell", self._cell_ends)
            self._following = False
        with self._lock:
            self._running = self._told = None

    def _cell_starts(self, info: Any = None) -> None:
        header = self.current_header() or {}
        with self._lock:
            self._running = header

    def _cell_ends(self, result: Any = None) -> None:
        with self._lock:
            self._running = None

    # ---- origins ----

    def current_origin(self) -> str:
        """The origin tag for work submitted now: the executing cell (called per submission)."""
        header = self.current_header()
        if header is None:
            return f"cell-{self.shell.execution_count}"
        origin = str(header.get("msg_id", ""))
        if origin:
            with self._lock:
                self._cells.remember(origin, header)
        return origin

    def current_header(self) -> dict[str, Any] | None:
        """The parent header of the executing cell's request, or None outside a kernel."""
        if self.kernel is None:
            return None
        try:
            parent = self.kernel.get_parent()
        except Exception:  # noqa: BLE001 - any ipykernel (or none with get_parent): no header
            return None
        header = parent.get("header") if isinstance(parent, dict) else None
        return dict(header) if header else None

    def header_of(self, origin: str) -> dict[str, Any] | None:
        with self._lock:
            return self._cells.get(origin)

    def mark_cell_task(self, name: str) -> None:
        """Lines of tasks called ``name`` are a cell's own output: print them without a prefix.

        By name, not id: the mark must be in place before the task is submitted.
        """
        with self._lock:
            self._own_names.remember(name, True)

    def is_cell_task(self, name: str) -> bool:
        """Whether tasks called ``name`` are cells (marked with ``mark_cell_task``)."""
        with self._lock:
            return name in self._own_names

    # ---- output ----

    def on_output(self, out: state.OutputLines) -> None:
        """The output handler (on the IO thread): write ``out`` into its cell."""
        with self._lock:
            own = out.name in self._own_names
        if own:
            text = out.text
        else:
            prefix = f"({out.name} pid={out.pid}) "
            text = "".join(prefix + line + "\n" for line in out.lines)
        self.write(out.origin, out.stream, text)

    def on_warning(self, out: state.OutputLines) -> None:
        """The warning handler (on the IO thread): a warning about a task, as stderr under
        the cell that submitted it."""
        self.write(out.origin, "stderr", out.text)

    def on_gcs_line(self, line: str) -> bool:
        """The driver's line about a GCS outage (on the IO thread): "GCS reconnecting…" under
        the running cell, the GCS back under the cell told so. False when no cell runs."""
        with self._lock:
            if line.startswith(RECONNECTING):
                header = self._told = self._running
            else:
                header = self._told if self._told is not None else self._running
                self._told = None
        if header is None:
            return False
        self._write_under(header, "stderr", line + "\n")
        return True

    def write(self, origin: str, stream: str, text: str) -> None:
        """Write ``text`` to ``stream`` ("stdout" or "stderr") under ``origin``'s cell."""
        self._write_under(self.header_of(origin), stream, text)

    def _write_under(self, header: dict[str, Any] | None, stream: str, text: str) -> None:
        """Write ``text`` to ``stream`` with the parent ``header`` (as printed without one)."""
        if not header or self.kernel is None:
            target = sys.stderr if stream == "stderr" else sys.stdout
            target.write(text)
            target.flush()
            return
        out = self._streams[stream]
        if hasattr(out, "set_thread_parent"):
            token = out.set_thread_parent(header)
            try:
                out.write(text)
            finally:
                out.reset_thread_parent(token)
        else:  # ipykernel < 7: one stream message with the cell's parent, straight to iopub
            self._send(header, "stream", {"name": stream, "text": text},
                       ident=getattr(out, "topic", None))

    @contextlib.contextmanager
    def displaying_in(self, origin: str) -> Iterator[bool]:
        """Within the block, ``IPython.display`` calls from this thread go to ``origin``'s cell.

        Yields False when the cell is unknown or there is no kernel (the display then goes
        wherever displays go by default).
        """
        header = self.header_of(origin)
        pub: Any = getattr(self.shell, "display_pub", None)
        if header is None or self.kernel is None or not hasattr(pub, "set_thread_parent"):
            yield False
            return
        token = pub.set_thread_parent(header)
        try:
            yield True
        finally:
            pub.reset_thread_parent(token)

    def _send(self, header: dict[str, Any], msg_type: str, content: dict[str, Any],
              ident: Any = None) -> None:
        kernel = self.kernel
        kernel.session.send(kernel.iopub_socket, msg_type, content,
                            parent={"header": header}, ident=ident)


def connection_id() -> str | None:
    """An id of the current runtime connection (None when not connected)."""
    import runtime as rt

    if not rt.is_initialized():
        return None
    try:
        return rt.get_runtime_context().get_worker_id()
    except RuntimeError:  # shut down meanwhile
        return None
