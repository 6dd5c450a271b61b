"""Close a widget with everything it owns, so nothing stays registered in ipywidgets.

``Widget.close()`` closes one comm: a container's children stay open, and so do the
``Layout`` and ``Style`` widgets every DOM widget creates for itself. Each of those keeps
a comm and an entry in ipywidgets' registry for the life of the kernel (ipywidgets
#1345, #2308), so a dashboard closes its whole tree with ``close_tree``.
"""

from __future__ import annotations

import ipywidgets as w


def close_tree(widget: w.Widget) -> None:
    """Close ``widget``, its children (recursively), their layouts and styles.

    A widget may also own widgets that are not among its children right now (a
    stand-in it swaps in and out): it names them in ``_detached_widgets()``.
    """
    detached = getattr(widget, "_detached_widgets", None)
    owned = [*getattr(widget, "children", ()), *(detached() if detached else ())]
    for child in owned:
        close_tree(child)
    for attr in ("layout", "style"):
        part = getattr(widget, attr, None)
        if isinstance(part, w.Widget):
            w.Widget.close(part)
    w.Widget.close(widget)  # the base close: a subclass's close() may be what called us
