"""A progress bar for ``rt.get`` on many refs: ``get_with_progress(refs)``.

Like ``rt.get(refs)``, but when the values are not all ready within ``delay`` seconds
(one second by default) it shows a tqdm-like bar in the notebook that counts the ready
refs, fed by ``rt.wait`` on the calling thread. When the call returns (or raises) the
live bar is closed and replaced, in the same output, by a static picture of where it
ended, so nothing is left registered and a saved notebook or a CI log reads
"rt.get: 100/100 ready in 2.3 s".

Whether plain ``rt.get`` shows it is the notebook extension's decision (``kernel_ext``);
this module only provides the function.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as w

import runtime as rt
from widgets._close import close_tree

__all__ = ["GetProgress", "get_with_progress"]

#: Longest time between two updates of the bar while waiting, in seconds.
_POLL_S = 0.2


class GetProgress(w.HBox):
    """A bar and a caption: "rt.get [#####    ] 40/100 ready · 1.2 s".

    Attributes
    ----------
    total : int
        Refs to wait for.
    ready : int
        Refs ready so far.
    """

    def __init__(self, total: int, description: str = "rt.get") -> None:
        self.total, self.ready, self.elapsed, self.outcome = total, 0, 0.0, "waiting"
        self.description = description
        self.bar = w.IntProgress(value=0, min=0, max=max(total, 1), description=description,
                                 layout=w.Layout(width="360px"))
        self.caption = w.Label(self._caption())
        super().__init__([self.bar, self.caption])
        self.add_class("cellray-progress")

    def _caption(self) -> str:
        how = {"waiting": "ready", "done": "ready", "failed": "ready, then failed"}[self.outcome]
        return f"{self.ready}/{self.total} {how} · {self.elapsed:.1f} s"

    def update(self, ready: int, elapsed: float) -> None:
        """Show ``ready`` of ``total`` refs ready after ``elapsed`` seconds."""
        self.ready, self.elapsed = ready, elapsed
        with self.bar.hold_sync(), self.caption.hold_sync():
            self.bar.value = ready
            self.caption.value = self._caption()

    def finish(self, elapsed: float, ok: bool = True) -> None:
        """Show the end: all ready (green), or the call raised (red)."""
        self.outcome = "done" if ok else "failed"
        if ok:
            self.ready = self.total
        self.update(self.ready, elapsed)
        self.bar.bar_style = "success" if ok else "danger"

    def summary(self) -> str:
        return f"{self.description}: {self._caption()}"

    def close(self) -> None:
        close_tree(self)

    def _repr_html_(self) -> str:
        colour = {"done": "#16a34a", "failed": "#dc2626"}.get(self.outcome, "#3b82f6")
        return (f'<div class="cellray-progress"><progress value="{self.ready}" max="{max(self.total, 1)}" '
                f'style="width:300px;accent-color:{colour}"></progress> {html.escape(self.summary())}</div>')

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = self.summary()
        return bundle

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.summary())

    def __repr__(self) -> str:
        return f"<GetProgress {self.summary()}>"


class _Display:
    """The bar's place in the notebook: shown once, updated in place; a no-op outside a kernel."""

    def __init__(self, widget: GetProgress) -> None:
        self.handle: Any = None
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython comes with ipywidgets
            return
        ip = get_ipython()
        if ip is None or getattr(ip, "kernel", None) is None:
            return  # a script or a terminal: no front end to draw a bar
        self.handle = display(widget, display_id=True)

    def replace(self, widget: GetProgress) -> None:
        if self.handle is not None:
            self.handle.update(widget)


def get_with_progress(object_refs: rt.ObjectRef | Sequence[rt.ObjectRef], *,
                      timeout: float | None = None, delay: float = 1.0,
                      description: str = "rt.get") -> Any:
    """``rt.get(object_refs)``, with a progress bar when it blocks for more than ``delay`` s.

    Parameters
    ----------
    object_refs : ObjectRef or list of ObjectRef
        As for ``rt.get``; a single ref is just ``rt.get`` (there is nothing to count).
    timeout : float, optional
        Seconds before ``GetTimeoutError``, as for ``rt.get``.
    delay : float
        Seconds to wait before showing the bar; calls that finish sooner show nothing.
    description : str
        The bar's label.

    Returns
    -------
    The values, in the order of ``object_refs``.

    Raises
    ------
    Whatever ``rt.get`` raises: the first failed task's error, ``GetTimeoutError`` after
    ``timeout``. The bar then turns red and says so.

    Examples
    --------
    >>> from widgets.progress import get_with_progress
    >>> values = get_with_progress([slow.remote(i) for i in range(100)])   # doctest: +SKIP
    """
    if isinstance(object_refs, rt.ObjectRef):
        return rt.get(object_refs, timeout=timeout)
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    refs = list(object_refs)
    unique = list(dict.fromkeys(refs))  # rt.wait wants each ref once
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout

    def left(cap: float) -> float:
        return cap if deadline is None else max(min(cap, deadline - time.monotonic()), 0.0)

    pending = unique
    if unique:
        _, pending = rt.wait(unique, num_returns=len(unique), timeout=left(delay), fetch_local=False)
    if not pending:
        return rt.get(refs, timeout=left(float("inf")) if deadline else None)
    bar = GetProgress(len(unique), description)
    place = _Display(bar)
    ok = False
    try:
        while pending and left(1.0) > 0:
            bar.update(len(unique) - len(pending), time.monotonic() - start)
            _, pending = rt.wait(pending, num_returns=len(pending), timeout=left(_POLL_S),
                                 fetch_local=False)
        bar.update(len(unique) - len(pending), time.monotonic() - start)
        values = rt.get(refs, timeout=left(float("inf")) if deadline else None)
        ok = True
        return values
    finally:
        bar.finish(time.monotonic() - start, ok=ok)
        bar.close()          # the live bar goes; its static picture takes its place
        place.replace(bar)
