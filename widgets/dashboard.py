"""``Dashboard``: the live cluster dashboard (nodes, futures, task timeline, object store,
actors, placement groups, scheduler spillover).

How it moves, and why it never blocks the kernel:

- **Feed.** ``runtime.state.subscribe`` calls ``_Feed`` on the subscription's own thread
  with every change of the nodes, tasks, actors, events, placement_groups and objects tables; it
  merges the change into the pure ``ClusterModel`` under a lock and raises a flag. That
  is all it does.
- **Refresher.** One daemon thread per dashboard waits for the flag (or one second, so
  the chart's time axis moves on), takes a view of the model under the lock, and sets
  the widgets' traits inside ``hold_sync()``, then waits ``interval`` seconds before it
  looks again: a burst of thousands of changes becomes one update, at most
  1/``interval`` updates a second. Traits whose value did not change send nothing.
- **Head.** The refresher also asks for the head's storage backend and restart counts
  (``runtime.state.get_head``) once the subscription is synced, after every resync (a GCS
  restart) and every ``_HEAD_REFRESH_S`` seconds, with a short deadline; the header shows
  them.
- **Ownership.** The subscription holds only the feed; the refresher holds the feed,
  the subscription and a *weak* reference to the widget. Nothing global keeps a
  dashboard alive. ``close()`` stops the refresher, closes the subscription and closes
  every widget of the dashboard; ``runtime.shutdown()`` ends the subscription, and the
  refresher then draws a last picture ("stopped") and exits.
"""

from __future__ import annotations

import contextlib
import html
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import ipywidgets as w
import traitlets

import runtime
from runtime import state
from widgets._close import close_tree
from widgets.actors_panel import ActorsPanel
from widgets.futures_panel import FuturesPanel
from widgets.model import ClusterModel
from widgets.nodes_panel import NodesPanel
from widgets.objects_panel import ObjectsPanel
from widgets.placement_groups_panel import PlacementGroupsPanel
from widgets.render import STYLE, snapshot_html
from widgets.scheduler_panel import SchedulerPanel
from widgets.timeline import DEFAULT_WINDOW_S
from widgets.timeline_panel import TimelinePanel
from widgets.views import DashboardView

__all__ = ["Dashboard"]

logger = logging.getLogger(__name__)

#: The tables a dashboard subscribes to.
TABLES = ("nodes", "tasks", "actors", "events", "placement_groups", "objects")
#: Longest the refresher waits without a change before it redraws (the chart's clock).
_IDLE_REDRAW_S = 1.0
#: How often the refresher asks for the head's storage and restarts (also after each resync).
_HEAD_REFRESH_S = 10.0
#: The deadline of that question: a GCS that is away must not hold the drawing up long.
_HEAD_TIMEOUT_S = 2.0
#: Changes that may queue for the feed (the subscription then stops reading until the feed
#: catches up). The feed only merges, so this is headroom for a burst, e.g. the first
#: snapshot of a large tasks table.
_MAX_PENDING = 50_000


class _Feed:
    """The subscription's callback: merge a change into the model and flag it. Nothing else."""

    def __init__(self, model: ClusterModel) -> None:
        self.model = model
        self.lock = threading.Lock()
        self.dirty = threading.Event()

    def __call__(self, change: state.Change) -> None:
        with self.lock:
            self.model.apply(change)
        self.dirty.set()

    def view(self) -> DashboardView:
        with self.lock:
            self.dirty.clear()  # under the lock: a change applied after this sets it again
            return self.model.view(time.time())


def _head_summary() -> str | None:
    """``storage sqlite:///... · GCS restarts 0``, or None when the GCS does not answer now."""
    try:
        return state.get_head(timeout=_HEAD_TIMEOUT_S).summary()
    except Exception as e:  # noqa: BLE001 - the GCS may be away: keep what was shown
        logger.debug("the dashboard could not read the head's state: %s", e)
        return None


def _own_id() -> str | None:
    """This driver's client id (what the GCS records as the owner of its objects), if known."""
    try:
        return runtime.get_runtime_context().get_worker_id()
    except Exception as e:  # noqa: BLE001 - only a label depends on it
        logger.debug("the dashboard could not read this driver's id: %s", e)
        return None


def _refresh_loop(ref: weakref.ReferenceType[Dashboard], feed: _Feed, sub: state.Subscription,
                  stop: threading.Event, interval: float) -> None:
    """The refresher thread: redraw on change, at most every ``interval`` seconds."""
    head: str | None = None
    head_asked, head_resets = float("-inf"), -1
    try:
        while not stop.is_set():
            feed.dirty.wait(_IDLE_REDRAW_S)
            if stop.is_set():
                return
            live = sub.active  # False once the subscription ended (runtime.shutdown())
            view = feed.view()
            resets = feed.model.resets
            if live and view.synced and (resets != head_resets
                                         or time.monotonic() - head_asked > _HEAD_REFRESH_S):
                head_asked, head_resets = time.monotonic(), resets
                head = _head_summary() or head
            dash = ref()
            if dash is None:  # collected without close(): nothing left to draw
                return
            dash._head = head
            dash._away = state.gcs_outage()
            dash._draw(view, "live" if live else "stopped: the cluster connection was shut down")
            del dash
            if not live:
                return
            stop.wait(interval)
    except Exception:  # a daemon thread: log whatever stops it, never die silently
        logger.exception("the dashboard refresher failed; the dashboard stops updating")
    finally:
        sub.close()


def _descendants(widget: w.Widget) -> Iterator[w.Widget]:
    """``widget``, its layout, and the same for every child, recursively."""
    yield widget
    layout = getattr(widget, "layout", None)
    if isinstance(layout, w.Widget):
        yield layout
    for child in getattr(widget, "children", ()):
        yield from _descendants(child)


class Dashboard(w.VBox):
    """A live dashboard of the current cluster: nodes, futures, a timeline of task runs per
    worker, the object stores, actors, placement groups, scheduler decisions.

    Attaches to the cluster that ``runtime.init()`` connected (through ``runtime.state``'s
    subscriptions) and keeps moving while tasks run, without blocking the kernel. Display
    it as the last expression of a cell, or with ``display()``.

    Parameters
    ----------
    interval : float
        Shortest time between two updates of the front end, in seconds.
    window : float
        How far back the decisions chart reaches, in seconds.
    bucket : float
        Seconds per bar of the decisions chart.
    max_rows : int
        Rows in each table (latest tasks, waiting tasks, scheduler events, largest objects).
    timeline_window : float
        Seconds of task runs the timeline shows at first (its dropdown zooms to 30 s, 1 min,
        5 min or 15 min).
    max_bars : int
        Task runs the timeline keeps, so a long session stays bounded (older ones go first).

    Raises
    ------
    RuntimeError
        When ``runtime.init()`` was not called.

    Examples
    --------
    >>> import runtime as rt
    >>> from widgets import Dashboard
    >>> rt.init(num_cpus=2)                      # doctest: +SKIP
    >>> dash = Dashboard()                       # doctest: +SKIP
    >>> dash                                     # doctest: +SKIP
    >>> dash.close()                             # doctest: +SKIP
    """

    interval = traitlets.Float(0.25, read_only=True,
                               help="Shortest time between two front-end updates, in seconds.")
    status = traitlets.Unicode("connecting…", read_only=True,
                               help="live, stopped (the cluster shut down) or closed.")

    def __init__(self, *, interval: float = 0.25, window: float = 300.0, bucket: float = 5.0,
                 max_rows: int = 10, timeline_window: float = DEFAULT_WINDOW_S, max_bars: int = 2000) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        model = ClusterModel(window_s=window, bucket_s=bucket, max_rows=max_rows,
                             timeline_window_s=timeline_window, max_bars=max_bars)
        self._closed = False
        self._draws = 0
        #: The head's storage and restarts, as the refresher last read them.
        self._head: str | None = None
        #: Seconds the GCS has been unreachable (None: it answers), as of the last redraw.
        self._away: float | None = None
        self._header = w.HTML()
        self._style = w.HTML(STYLE, layout=w.Layout(display="none"))
        self.nodes = NodesPanel()
        self.futures = FuturesPanel()
        self.timeline = TimelinePanel(timeline_window)
        self.objects = ObjectsPanel()
        self.actors = ActorsPanel()
        self.scheduler = SchedulerPanel()
        self.placement_groups = PlacementGroupsPanel()
        self._panels = (self.nodes, self.futures, self.timeline, self.objects, self.actors,
                        self.placement_groups, self.scheduler)
        super().__init__([self._style, self._header, *self._panels],
                         layout=w.Layout(padding="4px 8px", border="1px solid #e5e7eb"))
        self.add_class("cellray-dashboard")
        self.set_trait("interval", float(interval))
        self._set_header("connecting…")
        self._feed = _Feed(model)
        self._stop = threading.Event()
        try:
            self._sub = state.subscribe(TABLES, self._feed, max_pending=_MAX_PENDING)
        except BaseException:
            self._closed = True
            self._close_widgets()
            raise
        own = _own_id()
        with self._feed.lock:
            model.own_id = own
        self._thread = threading.Thread(
            target=_refresh_loop, args=(weakref.ref(self), self._feed, self._sub, self._stop, interval),
            name="cellray-dashboard-refresher", daemon=True)
        self._thread.start()

    # ---- drawing (on the refresher thread) ----

    def _set_header(self, status: str) -> None:
        self.set_trait("status", status)
        colour = "#16a34a" if status == "live" else "#6b7280"
        head = (f" · <span style='color:#6b7280'>{html.escape(self._head)}</span>"
                if self._head else "")
        if self._away is not None:  # running work goes on; what needs the GCS waits for it
            head += (f" · <b style='color:#b45309'>GCS reconnecting… ({self._away:.0f} s)</b>")
        self._header.value = (f"<b>cellray</b> cluster dashboard · "
                              f"<span style='color:{colour}'>{status}</span>{head}")

    def _draw(self, view: DashboardView, status: str) -> None:
        with contextlib.ExitStack() as held:
            for widget in _descendants(self):
                held.enter_context(widget.hold_sync())
            self._set_header(status if view.synced or status != "live" else "connecting…")
            self.nodes.show(view.nodes)
            self.futures.show(view.futures)
            self.timeline.show(view.timeline)
            self.objects.show(view.objects)
            self.actors.show(view.actors)
            self.placement_groups.show(view.placement_groups)
            self.scheduler.show(view.scheduler)
        self._draws += 1

    # ---- public ----

    @property
    def model(self) -> ClusterModel:
        """The model behind the widget (read it under ``statistics()`` for a consistent copy)."""
        return self._feed.model

    @property
    def running(self) -> bool:
        """True while the refresher thread runs (until ``close()`` or the cluster's shutdown)."""
        return self._thread.is_alive()

    def view(self) -> DashboardView:
        """What the dashboard shows now, as an immutable ``DashboardView``."""
        with self._feed.lock:
            return self._feed.model.view(time.time())

    def statistics(self) -> dict[str, Any]:
        """A consistent snapshot for debugging and tests: counts, sizes, state of the threads."""
        with self._feed.lock:
            m = self._feed.model
            return {"synced": m.synced, "version": m.version, "resets": m.resets,
                    "counts": dict(m.counts), "nodes": len(m.nodes), "tasks": len(m.tasks),
                    "actors": len(m.actors), "objects": len(m.objects), "bars": len(m.timeline),
                    "draws": self._draws, "status": self.status,
                    "refresher_alive": self._thread.is_alive(), "subscribed": self._sub.active,
                    "head": self._head, "gcs_away_s": self._away}

    def summary(self) -> str:
        """The plain-text picture: what a terminal or a CI log shows instead of the widget."""
        head = f"\nHead: {self._head}" if self._head else ""
        if self._away is not None:
            head += f"\nGCS reconnecting… ({self._away:.0f} s): running work goes on"
        return f"cellray dashboard ({self.status})\n" + self.view().summary() + head

    def close(self) -> None:
        """Stop updating, unsubscribe, and close every widget of the dashboard (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._stop.set()
        self._feed.dirty.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        self._sub.close()
        self.set_trait("status", "closed")
        self._close_widgets()

    def _close_widgets(self) -> None:
        close_tree(self)

    # ---- fallbacks for terminals, logs and static renderers ----

    def _repr_html_(self) -> str:
        return snapshot_html(self.view(), f"{self.status} · {self._head}" if self._head else self.status)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = self.summary()
        bundle["text/html"] = self._repr_html_()
        return bundle

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.summary())

    def __repr__(self) -> str:
        feed = getattr(self, "_feed", None)
        if feed is None:
            return f"<cellray Dashboard ({self.status})>"
        c = feed.model.counts
        return (f"<cellray Dashboard ({self.status}): {len(feed.model.nodes)} nodes, "
                f"{c['running']} running, {c['finished']} finished>")
