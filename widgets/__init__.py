"""ipywidgets dashboards and rich reprs for a cellray cluster.

    import runtime as rt
    from widgets import Dashboard
    rt.init(num_cpus=2)
    Dashboard()          # nodes, futures, actors and scheduler spillover, live

How the package is built: ``model`` is a pure model (``runtime.state.Change`` objects in,
immutable ``views`` out; no ipywidgets) and ``render`` turns views into HTML and SVG; one
module per section (``nodes_panel``, ``futures_panel``, ``actors_panel``,
``placement_groups_panel``, ``scheduler_panel``) composes stock ipywidgets and updates them
in place; ``dashboard`` wires them to a ``runtime.state`` subscription through a throttled refresher thread.
``reprs`` holds the IPython HTML formatters for the runtime's objects and ``progress`` a
progress bar for ``rt.get``. Only ``runtime``'s public API is used (``runtime``,
``runtime.exceptions``, ``runtime.state``); ``runtime`` never imports this package.

The names below load on first use, so ``import widgets.model`` does not import ipywidgets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from widgets.dashboard import Dashboard
    from widgets.progress import get_with_progress
    from widgets.reprs import register_formatters, unregister_formatters

__all__ = ["Dashboard", "get_with_progress", "register_formatters", "unregister_formatters"]

_LAZY = {"Dashboard": "widgets.dashboard", "register_formatters": "widgets.reprs",
         "unregister_formatters": "widgets.reprs", "get_with_progress": "widgets.progress"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'widgets' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
