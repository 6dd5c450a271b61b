"""The Scheduler section: local, received and spilled decisions per node over time, and the
latest spills (and infeasible tasks) with their reasons and targets."""

from __future__ import annotations

import ipywidgets as w

from widgets._close import close_tree
from widgets.render import LOCAL_COLOUR, RECEIVED_COLOUR, SPILLED_COLOUR, decision_chart, decisions_table
from widgets.views import SchedulerView


class SchedulerPanel(w.VBox):
    """An SVG chart in one HTML widget (redrawn by changing its value) and a decisions table."""

    def __init__(self) -> None:
        self.title = w.HTML(
            "<h4>Scheduler</h4><span class='cellray-muted'>decisions per node: "
            f"<span style='color:{LOCAL_COLOUR}'>&#9632; ran where submitted (local)</span> "
            f"<span style='color:{RECEIVED_COLOUR}'>&#9632; received from a global scheduler</span> "
            f"<span style='color:{SPILLED_COLOUR}'>&#9632; spilled to another node</span></span>")
        self.chart = w.HTML()
        self.chart.add_class("cellray-decisions-chart")
        self.events_title = w.HTML("<b>Latest spills and infeasible tasks</b>")
        self.events = w.HTML()
        super().__init__([self.title, self.chart, self.events_title, self.events])
        self.add_class("cellray-scheduler")

    def show(self, view: SchedulerView) -> None:
        self.chart.value = decision_chart(view)
        self.events.value = decisions_table(view)

    def close(self) -> None:
        close_tree(self)
