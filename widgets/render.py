"""HTML and SVG for the dashboard's tables and chart, from the model's views.

Pure functions of ``widgets.model`` views to strings: no ipywidgets, no clock. Every
string that comes from the cluster (task names, error details, actor names) is escaped,
since a task name is user input and the strings land in a notebook page.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Iterable, Sequence

from runtime.protocol.states import ActorState, PlacementGroupState, TaskState
from runtime.state import format_bytes
from widgets.model import short_id
from widgets.objects_view import ObjectStoreView
from widgets.timeline import TimelineMark, TimelineView, window_text
from widgets.views import (
    ActorsView,
    DashboardView,
    FuturesView,
    NodeSeries,
    PlacementGroupsView,
    SchedulerView,
    TaskRowView,
)

__all__ = [
    "STYLE",
    "actors_table",
    "count_tile",
    "decision_chart",
    "decisions_table",
    "fmt_duration",
    "format_bytes",
    "largest_objects_table",
    "placement_groups_table",
    "snapshot_html",
    "store_table",
    "tasks_table",
    "timeline_chart",
    "timeline_legend",
]

#: Colours of the two series and of task states (also used by the legend).
LOCAL_COLOUR, RECEIVED_COLOUR, SPILLED_COLOUR = "#3b82f6", "#14b8a6", "#f97316"
_STATE_COLOURS: dict[str, str] = {
    TaskState.RUNNING: "#2563eb", TaskState.SENT_AHEAD: "#60a5fa", TaskState.FINISHED: "#16a34a",
    TaskState.FAILED: "#dc2626",
    TaskState.CANCELLED: "#6b7280", TaskState.INFEASIBLE: "#b45309", TaskState.RETRYING: "#b45309",
    TaskState.SPILLED: SPILLED_COLOUR, TaskState.SCHEDULED: RECEIVED_COLOUR,
    ActorState.ALIVE: "#16a34a", ActorState.DEAD: "#dc2626", ActorState.RESTARTING: "#b45309",
    ActorState.PENDING: "#6b7280", PlacementGroupState.CREATED: "#16a34a",
    PlacementGroupState.RESCHEDULING: "#b45309", PlacementGroupState.REMOVED: "#6b7280"}

#: How the timeline marks a failed run (outline and an x mark) and a cancelled one (pale, dashed).
FAILED_COLOUR, CANCELLED_COLOUR = "#dc2626", "#6b7280"
#: Tick spacings the timeline's axis picks from, in seconds.
_TICKS = (5, 10, 15, 30, 60, 120, 300, 600)

#: One style block for the whole dashboard, scoped to its root class.
STYLE = """<style>
.cellray-dashboard {font-size: 12px;}
.cellray-dashboard h4 {margin: 6px 0 2px 0; font-size: 13px;}
.cellray-dashboard table.cellray-table {border-collapse: collapse; width: 100%; font-size: 11.5px;}
.cellray-dashboard table.cellray-table th {text-align: left; font-weight: 600;
  border-bottom: 1px solid #d1d5db; padding: 1px 6px;}
.cellray-dashboard table.cellray-table td {padding: 1px 6px; border-bottom: 1px solid #f3f4f6;
  vertical-align: top;}
.cellray-dashboard td.cellray-why {color: #4b5563; max-width: 520px; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap;}
.cellray-dashboard .cellray-tile {display: inline-block; min-width: 72px; text-align: center;
  padding: 2px 6px; border: 1px solid #e5e7eb; border-radius: 4px;}
.cellray-dashboard .cellray-num {font-size: 18px; font-weight: 600; line-height: 1.2;}
.cellray-dashboard .cellray-cap {font-size: 11px; color: #6b7280;}
.cellray-dashboard .cellray-muted {color: #6b7280;}
</style>"""


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)




def fmt_duration(s: float | None) -> str:
    """"4.8 ms", "1.2 s", "3 min"; "" for None."""
    if s is None:
        return ""
    if s < 1:
        return f"{s * 1000:.1f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.0f} min"


def _clock(t: float | None) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S") if t else ""


def _state(state: str) -> str:
    colour = _STATE_COLOURS.get(state, "#374151")
    return f'<span style="color:{colour};font-weight:600">{_e(state)}</span>'


def count_tile(value: int, caption: str) -> str:
    """One big number with a caption under it (the Futures and Actors counters)."""
    return (f'<div class="cellray-tile"><div class="cellray-num">{value}</div>'
            f'<div class="cellray-cap">{_e(caption)}</div></div>')


def _table(headers: Sequence[str], rows: Iterable[str], empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<div class="cellray-muted">{_e(empty)}</div>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f'<table class="cellray-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def tasks_table(rows: Sequence[TaskRowView], empty: str = "no tasks yet") -> str:
    """The latest (or waiting) tasks: function, state, node, duration, and why."""
    return _table(
        ("function", "state", "node", "duration", "detail"),
        (f'<tr title="task {_e(r.task_id)}, attempt {r.attempt}"><td>{_e(r.name)}</td>'
         f"<td>{_state(r.state)}</td><td>{_e(r.node)}</td><td>{fmt_duration(r.duration)}</td>"
         f'<td class="cellray-why" title="{_e(r.why)}">{_e(r.why)}</td></tr>' for r in rows),
        empty)


def actors_table(view: ActorsView) -> str:
    """Class, name, state, node, restarts, pending calls (and why a dead one died)."""
    return _table(
        ("class", "name", "state", "node", "restarts", "pending calls", "detail"),
        (f'<tr title="actor {_e(a.actor_id)}"><td>{_e(a.class_name)}</td><td>{_e(a.name)}</td>'
         f"<td>{_state(a.state)}</td><td>{_e(a.node)}</td><td>{_e(a.restarts)}</td>"
         f'<td>{a.pending_calls}</td><td class="cellray-why">{_e(a.death_cause)}</td></tr>'
         for a in view.rows),
        "no actors")


def placement_groups_table(view: PlacementGroupsView) -> str:
    """Name (or id), strategy, state, bundles, nodes, and why a waiting group waits."""
    return _table(
        ("group", "strategy", "state", "bundles", "nodes", "detail"),
        (f'<tr title="placement group {_e(g.placement_group_id)}">'
         f"<td>{_e(g.name or g.placement_group_id[:8])}</td><td>{_e(g.strategy)}</td>"
         f"<td>{_state(g.state)}</td><td>{_e(g.bundles)}</td><td>{_e(g.nodes)}</td>"
         f'<td class="cellray-why" title="{_e(g.why)}">{_e(g.why)}</td></tr>' for g in view.rows),
        "no placement groups")


def decisions_table(view: SchedulerView) -> str:
    """The latest scheduler decisions, newest first: when, task, from, to, reason."""
    return _table(
        ("time", "decision", "task", "node", "target", "reason"),
        (f'<tr title="task {_e(ev.task_id)}"><td>{_clock(ev.time)}</td><td>{_state(ev.state)}</td>'
         f"<td>{_e(ev.name)}</td><td>{_e(short_id(ev.node_id))}</td>"
         f"<td>{_e(short_id(ev.target_node_id)) if ev.target_node_id else ''}"
         f"{(' via ' + _e(ev.scheduler)) if ev.scheduler else ''}</td>"
         f'<td class="cellray-why" title="{_e(ev.detail)}">{_e(ev.detail)}</td></tr>'
         for ev in view.decisions),
        "no spills or infeasible tasks yet")


def decision_chart(view: SchedulerView, width: int = 640) -> str:
    """An SVG of stacked bars per node and time bucket: local, received and spilled decisions.

    One row per node, all on the same scale, the newest bucket on the right. The whole
    chart is one string, so a front end redraws it by replacing one element's content.
    """
    label_w, total_w, row_h, gap, axis_h = 64, 210, 30, 6, 14
    plot_w = width - label_w - total_w
    rows = view.series or ()
    height = max(len(rows), 1) * (row_h + gap) + axis_h

    def stacks(s: NodeSeries) -> list[tuple[int, int, int]]:
        received = s.received or (0,) * len(s.local)
        return list(zip(s.local, received, s.spilled, strict=False))

    peak = max((sum(c) for s in rows for c in stacks(s)), default=0)
    scale = peak or 1
    parts = [(f'<svg class="cellray-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
              f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
              f'font-size="11">')]
    if not rows:
        parts.append(f'<text x="{label_w}" y="{row_h // 2 + 4}" fill="#6b7280">no decisions yet</text>')
    for i, s in enumerate(rows):
        y0 = i * (row_h + gap)
        cells = stacks(s)
        bw = plot_w / (len(cells) or 1)
        parts.append(f'<text x="0" y="{y0 + row_h // 2 + 4}" fill="#111827">{_e(s.label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y0}" width="{plot_w}" height="{row_h}" fill="#f9fafb" '
                     f'stroke="#e5e7eb"/>')
        for j, cell in enumerate(cells):
            x, top = label_w + j * bw, float(y0 + row_h)
            for n, colour, what in zip(cell, (LOCAL_COLOUR, RECEIVED_COLOUR, SPILLED_COLOUR),
                                       ("local", "received", "spilled"), strict=True):
                if not n:
                    continue
                h = row_h * n / scale
                top -= h
                parts.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{max(bw - 1, 1):.1f}" '
                             f'height="{h:.1f}" fill="{colour}"><title>{n} {what}</title></rect>')
        parts.append(f'<text x="{label_w + plot_w + 8}" y="{y0 + row_h // 2 + 4}">'
                     f'<tspan fill="{LOCAL_COLOUR}">{s.total_local} local</tspan> · '
                     f'<tspan fill="{RECEIVED_COLOUR}">{s.total_received} received</tspan> · '
                     f'<tspan fill="{SPILLED_COLOUR}">{s.total_spilled} spilled</tspan></text>')
    minutes = view.window_s / 60
    span = f"{minutes:g} min ago" if minutes >= 1 else f"{view.window_s:g} s ago"
    parts.append(f'<text x="{label_w}" y="{height - 2}" fill="#6b7280">{span}</text>')
    parts.append(f'<text x="{label_w + plot_w}" y="{height - 2}" fill="#6b7280" text-anchor="end">'
                 f'now · peak {peak} per {view.bucket_s:g} s</text>')
    parts.append("</svg>")
    return "".join(parts)


def _ago(s: float) -> str:
    return "now" if s == 0 else f"-{s / 60:g} min" if s >= 60 else f"-{s:g} s"


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _mark_tip(mark: TimelineMark, now: float) -> str:
    bar, n = mark.bars[0], len(mark.bars)
    if n == 1:
        return (f"{bar.name}() · task {bar.task_id[:8]} · attempt {bar.attempt} · "
                f"{fmt_duration(bar.duration(now))} · {bar.state}"
                + (f" · {bar.detail}" if bar.detail else ""))
    took = sorted(b.duration(now) for b in mark.bars)
    ends = [b.end if b.end is not None else now for b in mark.bars]
    return (f"{n} runs of {bar.name}() · {bar.state} · {_clock(bar.start)} to {_clock(max(ends))} · "
            f"each {fmt_duration(took[0])} to {fmt_duration(took[-1])}"
            + (f" · first: {bar.detail}" if bar.detail else ""))


def timeline_chart(view: TimelineView, width: int = 860) -> str:
    """An SVG of task runs: a lane per worker (pid) under its node, a bar per run coloured by
    its function, time left to right over the view's window with now at the right edge.

    A failed run is outlined red with an x mark after it (also a run that ended and was retried);
    a cancelled one is pale with a dashed outline. Each bar's tooltip (``<title>``) names the
    function, task, attempt, duration and state. Runs of one function and state that would
    overlap on screen are drawn as one bar (``TimelineView.marks``) whose ``data-runs`` says
    how many it stands for, and whose tooltip gives their count, times and durations.
    """
    label_w, lane_h, bar_h, head_h, axis_h = 110, 16, 12, 16, 16
    plot_w = width - label_w - 14
    body: list[str] = []
    y, node = 0, None
    for i, lane in enumerate(view.lanes):
        if i == 0 or lane.node_id != node:
            node = lane.node_id
            body.append(f'<text x="0" y="{y + 12}" font-weight="600" fill="#111827">'
                        f"node {_e(lane.node)}</text>")
            y += head_h
        body.append(f'<g class="cellray-lane" data-node="{_e(lane.node)}" data-pid="{lane.pid or 0}">'
                    f'<text x="12" y="{y + 11}" fill="#374151">pid {lane.pid or "?"}</text>'
                    f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{lane_h - 2}" fill="#f9fafb"/>')
        for mark in view.marks(lane, plot_w):
            bar, n = mark.bars[0], len(mark.bars)
            px, pw = label_w + mark.x, mark.width
            cls, extra = "cellray-bar", ""
            if bar.failed:
                cls += " cellray-bar-failed"
                extra = f' stroke="{FAILED_COLOUR}" stroke-width="1.5"'
            elif bar.cancelled:
                cls += " cellray-bar-cancelled"
                extra = f' fill-opacity="0.35" stroke="{CANCELLED_COLOUR}" stroke-dasharray="2,2"'
            elif bar.end is None:
                cls += " cellray-bar-running"
            tip = _mark_tip(mark, view.now)
            body.append(f'<rect class="{cls}" data-fn="{_e(bar.name)}" data-runs="{n}" '
                        f'x="{px:.1f}" y="{y + 1}" width="{pw:.1f}" height="{bar_h - 1}" '
                        f'fill="{_e(bar.colour)}"{extra}><title>{_e(tip)}</title></rect>')
            if bar.failed:
                body.append(f'<text class="cellray-fail-mark" x="{px + pw + 1:.1f}" y="{y + 10}" '
                            f'fill="{FAILED_COLOUR}" font-weight="700">&#215;<title>{_e(tip)}</title></text>')
        body.append("</g>")
        y += lane_h
    if not view.lanes:
        body.append(f'<text x="{label_w}" y="12" fill="#6b7280">no task ran in the last '
                    f"{window_text(view.window_s)}</text>")
        y += head_h
    step = next((t for t in _TICKS if view.window_s / t <= 6), view.window_s)
    grid, axis = [], []  # the grid goes under the bars, its labels below them
    for ago in (k * step for k in range(int(view.window_s // step) + 1)):
        tx = label_w + view.x(view.now - ago) * plot_w
        grid.append(f'<line x1="{tx:.1f}" y1="0" x2="{tx:.1f}" y2="{y}" stroke="#e5e7eb"/>')
        axis.append(f'<text x="{tx:.1f}" y="{y + axis_h - 3}" fill="#6b7280" '
                    f'text-anchor="{"end" if ago == 0 else "middle"}">{_ago(ago)}</text>')
    height = y + axis_h
    # Narrower output areas shrink the whole chart (viewBox): now stays at the right edge.
    return (f'<svg class="cellray-timeline-svg" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" style="max-width:100%;height:auto" '
            f'font-family="sans-serif" font-size="11" data-window="{view.window_s:g}">'
            + "".join(grid + body + axis) + "</svg>")


def timeline_legend(view: TimelineView, most: int = 12) -> str:
    """The functions' colours, what the marks mean, and how many runs the window holds."""
    chips = " ".join(f'<span style="color:{_e(c)}">&#9632;</span> {_e(name)}'
                     for name, c in view.legend[:most])
    if len(view.legend) > most:
        chips += f" … +{len(view.legend) - most} more"
    dropped = f" · {view.dropped} older runs not kept" if view.dropped else ""
    return (f'<span class="cellray-muted">{_plural(view.bars, "run")} on '
            f'{_plural(len(view.lanes), "worker")} in the last '
            f"{window_text(view.window_s)}{dropped} · "
            f"<span style='color:{FAILED_COLOUR}'>&#215;</span> failed · dashed: cancelled</span><br>{chips}")


def store_table(view: ObjectStoreView) -> str:
    """Each node's object store: bytes in use of its size, spilled to disk now and so far,
    and the copies of objects the GCS places there."""
    def used(n: int, cap: int) -> str:
        return f"{format_bytes(n)} / {format_bytes(cap)}" + (f" ({100 * n / cap:.0f}%)" if cap else "")

    return _table(
        ("node", "in store", "spilled now", "spilled so far", "objects", "their bytes"),
        (f'<tr class="cellray-store-row" title="node {_e(n.node_id)}"><td>{_e(n.label)}'
         f"{'' if n.alive else ' (dead)'}</td><td>{used(n.used, n.capacity)}</td>"
         f"<td>{format_bytes(n.spilled)}</td><td>{format_bytes(n.spilled_total)}</td>"
         f"<td>{n.copies}</td><td>{format_bytes(n.copy_bytes)}</td></tr>" for n in view.nodes),
        "no nodes")


def largest_objects_table(view: ObjectStoreView) -> str:
    """The largest objects in the stores, largest first: size, what created it, its owner,
    and the nodes holding a copy."""
    return _table(
        ("object", "size", "created by", "owner", "held by"),
        (f'<tr class="cellray-object-row" title="object {_e(o.object_id)}"><td><code>{_e(o.object_id[:12])}'
         f'</code></td><td class="cellray-object-size" data-bytes="{o.size}">{format_bytes(o.size)}</td>'
         f"<td>{_e(o.created_by)}</td><td>{_e(o.owner)}</td><td>{_e(', '.join(o.holders))}</td></tr>"
         for o in view.largest),
        "no objects in the stores (small values travel inline and are not listed)")


def _futures_tiles(f: FuturesView) -> str:
    return " ".join(count_tile(v, k) for k, v in f.counts.items())


def snapshot_html(view: DashboardView, status: str) -> str:
    """A static HTML picture of a view: the ``_repr_html_`` fallback for static renderers."""
    if not view.synced:
        return f'<div class="cellray-dashboard"><b>cellray dashboard</b> <i>{_e(status)}</i></div>'
    nodes = "".join(
        f"<tr><td>{_e(n.label)}</td><td>{'alive' if n.state.alive else 'dead'}</td>"
        f"<td>{n.state.resources_total.get('CPU', 0) - n.state.resources_available.get('CPU', 0):g}"
        f"/{n.state.resources_total.get('CPU', 0):g}</td><td>{n.state.cpu_percent:.0f}%</td>"
        f"<td>{format_bytes(n.state.memory_used)}/{format_bytes(n.state.memory_total)}</td>"
        f"<td>{format_bytes(n.state.store_used)}/{format_bytes(n.state.store_capacity)}</td></tr>"
        for n in view.nodes)
    return (f'{STYLE}<div class="cellray-dashboard"><b>cellray dashboard</b> '
            f'<span class="cellray-muted">{_e(status)}</span>'
            f"<h4>Nodes</h4>" + _table(("node", "state", "CPU slots", "CPU", "memory", "object store"),
                                       [nodes], "no nodes") +
            f"<h4>Futures</h4>{_futures_tiles(view.futures)}{tasks_table(view.futures.latest)}"
            f"<h4>Actors</h4>{actors_table(view.actors)}"
            f"<h4>Placement groups</h4>{placement_groups_table(view.placement_groups)}"
            f"<h4>Scheduler</h4>{decision_chart(view.scheduler)}{decisions_table(view.scheduler)}"
            f"<h4>Timeline</h4>{timeline_legend(view.timeline)}{timeline_chart(view.timeline)}"
            f"<h4>Object store</h4>{store_table(view.objects)}<b>Largest objects</b>"
            f"{largest_objects_table(view.objects)}</div>")
