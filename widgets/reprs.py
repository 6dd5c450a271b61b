"""Rich HTML reprs for the runtime's objects, registered as IPython formatters.

``runtime`` must not import IPython or this package, so its classes keep their plain
``__repr__``; ``register_formatters(ip)`` (called by the notebook extension on
``%load_ext``) teaches a shell to show them in HTML instead:

- ``ObjectRef``: the task that makes it, its state, node, duration, and whether the value
  is ready (or why the task waits / what it raised);
- ``ActorHandle``: class, name, state, node, restarts, pending calls;
- ``ClusterInfo`` (what ``rt.init`` returns): address, nodes, resources, tasks by state.

Each formatter asks the cluster when the object is displayed (one or two GCS queries) and
falls back to the object's plain repr when the cluster cannot answer, so a repr never
raises. ``text/plain`` is left alone: a terminal shows the runtime's own ``__repr__``.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable
from typing import Any

import runtime as rt
from runtime import state
from runtime.protocol.states import ActorState, TaskState
from widgets.model import short_id, waiting_reason
from widgets.render import fmt_duration, format_bytes

__all__ = [
    "actor_handle_html",
    "cluster_info_html",
    "object_ref_html",
    "register_formatters",
    "unregister_formatters",
]

logger = logging.getLogger(__name__)

_BOX = ('<div class="cellray-repr" style="font-family:var(--jp-code-font-family,monospace);'
        'font-size:12px;line-height:1.5">{}</div>')
_STATE_COLOURS: dict[str, str] = {
    TaskState.FINISHED: "#16a34a", ActorState.ALIVE: "#16a34a", TaskState.FAILED: "#dc2626",
    ActorState.DEAD: "#dc2626", TaskState.RUNNING: "#2563eb",
    TaskState.SENT_AHEAD: "#60a5fa", TaskState.INFEASIBLE: "#b45309",
    ActorState.RESTARTING: "#b45309"}


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _state(s: str) -> str:
    return f'<b style="color:{_STATE_COLOURS.get(s, "#374151")}">{_e(s)}</b>'


def _safe(render: Callable[[Any], str]) -> Callable[[Any], str | None]:
    """A formatter that never raises: on any error IPython falls back to text/plain."""

    def formatter(obj: Any) -> str | None:
        try:
            return render(obj)
        except Exception as e:  # noqa: BLE001 - cluster gone or unreachable: the plain repr will do
            logger.debug("no HTML repr for %r: %s", obj, e)
            return None

    formatter.__name__ = f"cellray_{render.__name__}"
    formatter.__doc__ = render.__doc__
    return formatter


def _connected() -> None:
    """Raise when no cluster is connected: a repr must never start one (rt.wait would)."""
    if not rt.is_initialized():
        raise RuntimeError("not connected")


def object_ref_html(ref: rt.ObjectRef) -> str:
    """HTML for an ObjectRef: ready or not, and the state of the task that produces it."""
    _connected()
    ready, _ = rt.wait([ref], num_returns=1, timeout=0, fetch_local=False)
    readiness = _state("ready") if ready else "<i>not ready</i>"
    task = state.get_task(ref)
    head = f"<b>ObjectRef</b> <code>{_e(ref.hex()[:16])}…</code> · {readiness}"
    if task is None:
        return _BOX.format(
            f"{head} · <span>a value put with rt.put, or a task the GCS no longer holds</span>")
    now = time.time()
    parts = [head, f"task <code>{_e(task.name)}</code> {_state(task.state)}"]
    if task.node_id:
        parts.append(f"node <code>{_e(short_id(task.node_id))}</code>")
    duration = task.duration if task.end_time else (now - task.start_time if task.start_time else None)
    if duration is not None:
        parts.append(fmt_duration(duration))
    if task.attempt:
        parts.append(f"attempt {task.attempt + 1}")
    why = waiting_reason(task, now, short_id(task.node_id))
    line = " · ".join(parts)
    if why and task.state != TaskState.RUNNING:
        line += f'<br><span style="color:#4b5563">{_e(why)}</span>'
    return _BOX.format(line)


def actor_handle_html(handle: rt.ActorHandle) -> str:
    """HTML for an ActorHandle: class, name, state, node, restarts, pending calls.

    The state is the GCS row's, except where the row lags behind what this process knows:
    the process that created the actor knows it is ALIVE once its constructor returned
    (``ActorHandle.state``), while the row waits for its node's next report.
    """
    actor = next((a for a in state.list_actors() if a.actor_id == handle.actor_id), None)
    if actor is None or actor.state == ActorState.PENDING:
        known = handle.state()
        if actor is None:  # its creation has not reached the GCS yet (events come in batches)
            why = ""
            if known == ActorState.ALIVE:
                why = " · its constructor returned; its details reach the cluster's tables shortly"
            elif known == ActorState.PENDING:
                why = " · not registered with the cluster yet"
            return _BOX.format(f"<b>Actor</b> <code>{_e(handle.actor_id[:12])}</code> · "
                               f"{_state(known)}{why}")
    else:
        known = actor.state
    name = f" <code>{_e(actor.name)}</code>" if actor.name else ""
    parts = [f"<b>Actor</b> {_e(actor.class_name)}{name} <code>{_e(actor.actor_id[:12])}</code>",
             _state(known)]
    if actor.node_id:
        where = f"node <code>{_e(short_id(actor.node_id))}</code>"
        parts.append(where + (f", pid {actor.pid}" if actor.pid else ""))
    limit = "∞" if actor.max_restarts < 0 else actor.max_restarts
    parts += [f"restarts {actor.num_restarts}/{limit}", f"{actor.pending_calls} pending calls"]
    line = " · ".join(parts)
    if actor.death_cause:
        line += f'<br><span style="color:#dc2626">{_e(actor.death_cause)}</span>'
    return _BOX.format(line)


def cluster_info_html(info: rt.ClusterInfo) -> str:
    """HTML for what ``rt.init`` returned: address, nodes and their resources, tasks by state."""
    how = "started here" if info.started_here else "attached"
    rows = [(f"<b>cellray cluster</b> <code>{_e(info.address)}</code> ({how}) · job "
             f"<code>{_e(info.job_id)}</code>"),
            f"session <code>{_e(info.session_dir)}</code>"]
    if not rt.is_initialized():
        rows.append("<i>not connected (runtime.shutdown() was called)</i>")
        return _BOX.format("<br>".join(rows))
    nodes = state.list_nodes()
    alive = [n for n in nodes if n.alive]
    total: dict[str, float] = {}
    free: dict[str, float] = {}
    for n in alive:
        for k, v in n.resources_total.items():
            total[k] = total.get(k, 0.0) + v
        for k, v in n.resources_available.items():
            free[k] = free.get(k, 0.0) + v
    def amount(k: str, v: float) -> str:
        return format_bytes(v) if k == "memory" else f"{v:g}"
    resources = ", ".join(f"{k} {amount(k, total[k] - free.get(k, 0.0))}/{amount(k, total[k])}"
                          for k in sorted(total))
    store = sum(n.store_used for n in alive), sum(n.store_capacity for n in alive)
    rows.append(f"{len(alive)} of {len(nodes)} nodes alive · in use: {_e(resources) or 'nothing'} · "
                f"object store {format_bytes(store[0])}/{format_bytes(store[1])}")
    tasks = state.summarize_tasks()
    if tasks:
        rows.append("tasks: " + ", ".join(f"{_state(s)} {n}" for s, n in sorted(tasks.items())))
    return _BOX.format("<br>".join(rows))


_FORMATTERS: tuple[tuple[type, Callable[[Any], str | None]], ...] = (
    (rt.ObjectRef, _safe(object_ref_html)),
    (rt.ActorHandle, _safe(actor_handle_html)),
    (rt.ClusterInfo, _safe(cluster_info_html)),
)


def register_formatters(ip: Any) -> None:
    """Show ObjectRef, ActorHandle and ClusterInfo in HTML in the shell ``ip``.

    Registers ``text/html`` formatters with ``ip.display_formatter``; calling it again
    replaces them (so ``%load_ext`` twice registers nothing twice).

    Examples
    --------
    >>> from IPython import get_ipython                  # doctest: +SKIP
    >>> register_formatters(get_ipython())               # doctest: +SKIP
    """
    html_formatter = ip.display_formatter.formatters["text/html"]
    for cls, fn in _FORMATTERS:
        html_formatter.for_type(cls, fn)


def unregister_formatters(ip: Any) -> None:
    """Undo ``register_formatters`` (for ``unload_ipython_extension``); a no-op if not registered."""
    html_formatter = ip.display_formatter.formatters["text/html"]
    for cls, fn in _FORMATTERS:
        if html_formatter.type_printers.get(cls) is fn:
            html_formatter.pop(cls)
