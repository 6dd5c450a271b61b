"""The Placement groups section: counts by state and a table of strategy, state, bundles,
nodes and why a waiting group waits."""

from __future__ import annotations

import ipywidgets as w

from widgets._close import close_tree
from widgets.render import count_tile, placement_groups_table
from widgets.views import PlacementGroupsView


class PlacementGroupsPanel(w.VBox):
    """Counters by group state and the groups table, each one HTML widget updated in place."""

    def __init__(self) -> None:
        self.title = w.HTML("<h4>Placement groups</h4>")
        self.tiles = w.HTML()
        self.table = w.HTML(placement_groups_table(PlacementGroupsView({}, ())))
        super().__init__([self.title, self.tiles, self.table])
        self.add_class("cellray-placement-groups")

    def show(self, view: PlacementGroupsView) -> None:
        self.tiles.value = " ".join(count_tile(n, state.lower()) for state, n in view.counts.items())
        self.table.value = placement_groups_table(view)

    def close(self) -> None:
        close_tree(self)
