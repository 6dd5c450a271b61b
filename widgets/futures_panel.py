"""The Futures section: task counts by state, the tasks that wait (and why), the latest tasks."""

from __future__ import annotations

import ipywidgets as w

from widgets._close import close_tree
from widgets.render import count_tile, tasks_table
from widgets.views import COUNT_KEYS, FuturesView


class FuturesPanel(w.VBox):
    """Counters (one HTML widget each, class ``cellray-count-<key>``, spaces as dashes:
    ``cellray-count-sent-ahead``) and two tables."""

    def __init__(self) -> None:
        self.title = w.HTML("<h4>Futures</h4>")
        self.tiles = {k: w.HTML(count_tile(0, k)) for k in COUNT_KEYS}
        for k, tile in self.tiles.items():
            tile.add_class("cellray-count")
            tile.add_class(f"cellray-count-{k.replace(' ', '-')}")  # a class name has no spaces
        self.tile_box = w.HBox(list(self.tiles.values()))
        self.waiting_title = w.HTML("<b>Waiting</b> <span class='cellray-muted'>(infeasible first, "
                                    "then the longest waiting)</span>")
        self.waiting = w.HTML()
        self.waiting_box = w.VBox([self.waiting_title, self.waiting], layout=w.Layout(display="none"))
        self.latest_title = w.HTML("<b>Latest tasks</b>")
        self.latest = w.HTML(tasks_table(()))
        self.latest.add_class("cellray-latest-tasks")
        super().__init__([self.title, self.tile_box, self.waiting_box, self.latest_title, self.latest])
        self.add_class("cellray-futures")

    def show(self, view: FuturesView) -> None:
        for k, tile in self.tiles.items():
            tile.value = count_tile(view.counts.get(k, 0), k)
        self.waiting_box.layout.display = None if view.waiting else "none"
        self.waiting.value = tasks_table(view.waiting, empty="")
        self.latest.value = tasks_table(view.latest)

    def close(self) -> None:
        close_tree(self)
