"""The Actors section: counts by state and a table of class, name, state, node, restarts, calls."""

from __future__ import annotations

import ipywidgets as w

from widgets._close import close_tree
from widgets.render import actors_table, count_tile
from widgets.views import ActorsView


class ActorsPanel(w.VBox):
    """Counters by actor state and the actors table, each one HTML widget updated in place."""

    def __init__(self) -> None:
        self.title = w.HTML("<h4>Actors</h4>")
        self.tiles = w.HTML()
        self.table = w.HTML(actors_table(ActorsView({}, ())))
        super().__init__([self.title, self.tiles, self.table])
        self.add_class("cellray-actors")

    def show(self, view: ActorsView) -> None:
        self.tiles.value = " ".join(count_tile(n, state.lower()) for state, n in view.counts.items())
        self.table.value = actors_table(view)

    def close(self) -> None:
        close_tree(self)
