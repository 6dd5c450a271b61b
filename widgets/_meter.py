"""A labelled bar: one resource of a node (description, progress bar, value in words)."""

from __future__ import annotations

import ipywidgets as w


class Meter(w.HBox):
    """``CPU [#####     ] 1/2``: a fraction shown as a bar, with the numbers beside it.

    ``set(fraction, text)`` changes the bar and the text in place; the bar turns orange
    above 80 % and red above 95 %.
    """

    def __init__(self, description: str) -> None:
        self.name = w.Label(description, layout=w.Layout(width="72px"))
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="130px"))
        self.text = w.Label("", layout=w.Layout(width="150px"))
        super().__init__([self.name, self.bar, self.text], layout=w.Layout(margin="0 12px 0 0"))
        self.add_class("cellray-meter")

    def set(self, fraction: float, text: str) -> None:
        """Show ``fraction`` (clamped to 0..1) and ``text``."""
        fraction = min(max(fraction, 0.0), 1.0)
        self.bar.value = fraction
        self.bar.bar_style = "danger" if fraction > 0.95 else "warning" if fraction > 0.8 else ""
        self.text.value = text
