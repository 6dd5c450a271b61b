"""The Object store section: bytes in each node's store (and spilled to disk), and the
largest objects with their size, creator, owner and the nodes holding a copy."""

from __future__ import annotations

import ipywidgets as w

from widgets._close import close_tree
from widgets.objects_view import ObjectStoreView
from widgets.render import format_bytes, largest_objects_table, store_table


class ObjectsPanel(w.VBox):
    """A totals line and two tables (one HTML widget each), redrawn by changing their values."""

    def __init__(self) -> None:
        self.title = w.HTML("<h4>Object store</h4>")
        self.totals = w.HTML()
        self.nodes = w.HTML(store_table(ObjectStoreView.empty()))
        self.nodes.add_class("cellray-store-nodes")
        self.largest_title = w.HTML("<b>Largest objects</b>")
        self.largest = w.HTML(largest_objects_table(ObjectStoreView.empty()))
        self.largest.add_class("cellray-largest-objects")
        super().__init__([self.title, self.totals, self.nodes, self.largest_title, self.largest])
        self.add_class("cellray-objects")

    def show(self, view: ObjectStoreView) -> None:
        spilled = sum(n.spilled for n in view.nodes)
        noun = "object" if view.count == 1 else "objects"
        self.totals.value = (f"<span class='cellray-muted'>{view.count} {noun} in the stores, "
                             f"{format_bytes(view.total_bytes)} (one copy each)"
                             f"{f'; {format_bytes(spilled)} spilled to disk' if spilled else ''}</span>")
        self.nodes.value = store_table(view)
        self.largest.value = largest_objects_table(view)

    def close(self) -> None:
        close_tree(self)
