"""``CellHooks``: a shell's ``pre_run_cell`` and ``post_run_cell`` events, registered once.

The extension's parts that follow cells (``interrupt``: which tasks a cell started;
``strip``: a cell's progress strip) derive from it and define the two methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

__all__ = ["CellHooks"]


class CellHooks(ABC):
    """Calls ``pre_run_cell`` and ``post_run_cell`` of the subclass around every cell of
    ``shell`` between ``register_cells`` and ``unregister_cells``."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self._registered = False

    @abstractmethod
    def pre_run_cell(self, info: Any = None) -> None:
        """A cell starts (IPython's ``pre_run_cell`` event)."""

    @abstractmethod
    def post_run_cell(self, result: Any = None) -> None:
        """A cell ended (IPython's ``post_run_cell`` event)."""

    def register_cells(self) -> None:
        """Follow every cell from now on (a second call does nothing)."""
        if not self._registered:
            self.shell.events.register("pre_run_cell", self.pre_run_cell)
            self.shell.events.register("post_run_cell", self.post_run_cell)
            self._registered = True

    def unregister_cells(self) -> None:
        """Stop following cells (nothing when not following them)."""
        if self._registered:
            self.shell.events.unregister("pre_run_cell", self.pre_run_cell)
            self.shell.events.unregister("post_run_cell", self.post_run_cell)
            self._registered = False
