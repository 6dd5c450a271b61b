"""The Timeline section: task runs per worker over the latest minutes, with a zoom control."""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from widgets._close import close_tree
from widgets.render import timeline_chart, timeline_legend
from widgets.timeline import DEFAULT_WINDOW_S, ZOOMS, TimelineView, window_text


class TimelinePanel(w.VBox):
    """A legend, a window dropdown (30 s, 1 min, 5 min, 15 min) and the SVG chart in one HTML
    widget, redrawn by changing its value.

    Changing the window redraws at once from the latest view (no wait for the next update);
    every later update keeps the chosen window.
    """

    def __init__(self, window: float = DEFAULT_WINDOW_S) -> None:
        if window <= 0:
            raise ValueError(f"the timeline's window must be > 0 seconds, got {window!r}")
        self.title = w.HTML("<h4>Timeline</h4>")
        zooms = sorted({*ZOOMS, float(window)})
        self.zoom = w.Dropdown(options=[(window_text(z), z) for z in zooms], value=float(window),
                               description="window", layout=w.Layout(width="170px"))
        self.zoom.add_class("cellray-timeline-zoom")
        self.legend = w.HTML()
        self.chart = w.HTML(timeline_chart(TimelineView.empty().zoom(float(window))))
        self.chart.add_class("cellray-timeline-chart")
        self._view: TimelineView | None = None
        self.zoom.observe(self._rezoom, names="value")
        super().__init__([w.HBox([self.title, self.zoom]), self.legend, self.chart])
        self.add_class("cellray-timeline")

    @property
    def window(self) -> float:
        """The window shown, in seconds (the dropdown's value)."""
        return float(self.zoom.value)

    def show(self, view: TimelineView) -> None:
        self._view = view
        self._draw(view)

    def _draw(self, view: TimelineView) -> None:
        zoomed = view if view.window_s == self.window else view.zoom(self.window)
        self.legend.value = timeline_legend(zoomed)
        self.chart.value = timeline_chart(zoomed)

    def _rezoom(self, change: dict[str, Any]) -> None:
        view = self._view
        self._draw(view if view is not None else TimelineView.empty())

    def close(self) -> None:
        self.zoom.unobserve(self._rezoom, names="value")
        close_tree(self)
