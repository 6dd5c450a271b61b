"""The IPython extension for cellray: ``%load_ext kernel_ext`` in a notebook.

::

    %load_ext kernel_ext
    %cluster start --cpus 4              # or: %cluster attach HOST:PORT --token-file F
    %cluster status                      # nodes, resources, load

    %%remote --cpus 2 --pull result      # this cell runs on a worker
    result = heavy(data)                 # `heavy` and `data` are sent along
    print("done")                        # printed here, as it happens
    result.mean()                        # the cell's value

    %remote sum(range(10))               # one expression
    %%remote --session s                 # a namespace that lives on between cells
    %push --session s a b                # names to a session; %pull fetches them back
    %cluster stop

Whatever a task started from a cell prints (``f.remote()`` too, nested tasks and actor
calls as well) appears under that cell, even when it prints after the cell finished.
``%unload_ext kernel_ext`` removes the magics and stops what they started.
``%cluster?`` and ``%remote?`` give each magic's help; ``kernel_ext.magics`` has all of it.

How the package is built: ``magics`` (one ``Magics`` class: parse, call, show) sits on
``arguments`` (the parsers), ``cluster`` (start/attach/stop), ``cell`` (what a cell
reads, shipping it, the ``RemoteCell`` future), ``names`` (which names a cell reads),
``routing`` (output to the right cell), ``interrupt`` (an interrupted cell cancels the
tasks it started), ``strip`` (a live progress strip under a cell whose tasks run on),
``display`` (rendering) and ``tracebacks`` (a failed task's traceback in IPython's
style). ``worker`` is the part that runs on the cluster; it imports only the standard
library, which is why this file imports nothing at the top: workers import
``kernel_ext.worker`` without IPython.
It uses only ``runtime``'s public API, ``runtime._tracebacks`` (the hook that draws a
failed task's traceback) and ``runtime.api._gcs_link.set_user_notifier`` (the hook that puts
"GCS reconnecting…" under the cell that waits for the GCS).
"""

from __future__ import annotations

from typing import Any

LOADED_MESSAGE = ("cellray: `%cluster start` starts a local cluster (or `%cluster attach "
                  "HOST:PORT`), then `%%remote` runs a cell on it; help: `%cluster?`, `%remote?`.")


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics on ``ipython`` (a second call does nothing)."""
    from kernel_ext.magics import CellrayMagics

    if CellrayMagics.__name__ in ipython.magics_manager.registry:
        return
    magics = CellrayMagics(ipython)
    ipython.register_magics(magics)
    ipython.configurables.append(magics)  # so that %config CellrayMagics works
    from kernel_ext import interrupt, strip, tracebacks
    from runtime.state import set_get_progress
    from widgets import get_with_progress, register_formatters
    tracebacks.install()  # a failed task's traceback in IPython's style, cellray's frames cut
    # Interrupting a cell cancels the tasks it started (a %%remote cell cancels its own).
    interrupt.install(ipython, grace=lambda: magics.soft_cancel_grace, skip=magics.router.is_cell_task)
    register_formatters(ipython)  # live reprs of ObjectRefs, actor handles, clusters
    # A live strip under each cell whose tasks run on; rt.get on many refs shows a bar after 1 s,
    # unless that cell's strip already shows those tasks (one bar per cell: see kernel_ext.strip).
    strip.install(ipython, enabled=lambda: magics.progress_strip, skip=magics.router.is_cell_task)
    set_get_progress(strip.get_progress(ipython, get_with_progress))
    print(LOADED_MESSAGE)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics, cancel running remote cells, and stop what the magics started."""
    from kernel_ext.magics import CellrayMagics

    magics = ipython.magics_manager.registry.pop(CellrayMagics.__name__, None)
    if magics is None:
        return
    from kernel_ext import interrupt, strip, tracebacks
    from runtime.state import set_get_progress
    from widgets import unregister_formatters
    interrupt.uninstall(ipython)
    strip.uninstall(ipython)
    tracebacks.uninstall()
    unregister_formatters(ipython)
    set_get_progress(None)
    try:
        magics.close()
    finally:
        if magics in ipython.configurables:
            ipython.configurables.remove(magics)
        table = ipython.magics_manager.magics
        for kind, names in magics.magics.items():
            for name in names:
                registered = table[kind].get(name)
                if getattr(registered, "__self__", None) is magics:
                    del table[kind][name]
