"""How the magics' results look in a cell: the cluster table, remote errors, cancellations.

Everything here is pure rendering: it takes plain values (``runtime.state`` rows, an
error) and returns text, HTML or MIME bundles. Each rich view has a ``text/plain``
fallback, so static renderers and terminals show something useful.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from runtime import state
from runtime.state import format_bytes

# ---- sizes --------------------------------------------------------------------------------




def _number(x: float) -> str:
    return f"{x:g}"


# ---- %cluster status ----------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterView:
    """What ``%cluster status`` shows: where the cluster is and each node's resources and load."""

    address: str
    session_dir: str
    started_here: bool
    nodes: Sequence[state.NodeState]

    def _resource_cells(self, n: state.NodeState) -> str:
        parts = []
        for name, total in sorted(n.resources_total.items(), key=_resource_order):
            used = total - n.resources_available.get(name, 0.0)
            parts.append(f"{name} {_number(used)}/{_number(total)}")
        return ", ".join(parts) or "-"

    def totals(self) -> dict[str, tuple[float, float]]:
        """Resource name -> (in use, total) over the live nodes."""
        out: dict[str, tuple[float, float]] = {}
        for n in self.nodes:
            if not n.alive:
                continue
            for name, total in n.resources_total.items():
                used = total - n.resources_available.get(name, 0.0)
                u, t = out.get(name, (0.0, 0.0))
                out[name] = (u + used, t + total)
        return dict(sorted(out.items(), key=_resource_order))

    def _rows(self) -> list[list[str]]:
        rows = []
        for n in self.nodes:
            gpus = ", ".join(f"{g.index}: {g.utilization:.0f}%" for g in n.gpus) or "-"
            rows.append([
                n.node_id[:12], n.address, "alive" if n.alive else f"dead ({n.death_cause})",
                self._resource_cells(n), str(n.queue_length), str(n.num_workers),
                f"{n.cpu_percent:.0f}%",
                f"{format_bytes(n.store_used)} / {format_bytes(n.store_capacity)}",
                gpus,
            ])
        return rows

    _HEADERS = ("node", "address", "state", "resources (in use/total)", "queue", "workers",
                "cpu", "object store", "gpu use")

    def summary(self) -> str:
        alive = sum(1 for n in self.nodes if n.alive)
        how = "started by this kernel" if self.started_here else "attached"
        totals = ", ".join(f"{k} {_number(u)}/{_number(t)}" for k, (u, t) in self.totals().items())
        return (f"cellray cluster at {self.address} ({how}): {alive} live node(s) of "
                f"{len(self.nodes)}; in use/total: {totals or 'no resources'}")

    def __repr__(self) -> str:
        return text_table(self._HEADERS, self._rows(), title=self.summary() + "\n"
                          f"session directory: {self.session_dir}")

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in self._HEADERS)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>"
                                        for c in row) + "</tr>" for row in self._rows())
        return (f"<div class='cellray-cluster'><p><b>{html.escape(self.summary())}</b><br>"
                f"<small>session directory: <code>{html.escape(self.session_dir)}</code></small></p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _resource_order(item: tuple[str, Any]) -> tuple[int, str]:
    order = {"CPU": 0, "GPU": 1}
    return order.get(item[0], 2), item[0]


def text_table(headers: Sequence[str], rows: Iterable[Sequence[str]], title: str = "") -> str:
    """A plain table with aligned columns."""
    table = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    table.insert(1, ["-" * w for w in widths])
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in table]
    return "\n".join([title, *lines] if title else lines)


# ---- remote errors ------------------------------------------------------------------------

#: A traceback entry of kernel_ext's own remote-side code (how a cell is exec'ed).
_WORKER_FRAME = re.compile(
    r'^  File "[^"\n]*kernel_ext[/\\]worker\.py", line \d+, in \w+\n(?:    .*\n)*', re.MULTILINE)


def cell_traceback(remote_traceback: str) -> str:
    """The remote traceback without the frames of the code that exec'ed the cell."""
    return _WORKER_FRAME.sub("", remote_traceback)


def remote_error_lines(label: str, err: Any, own_names: Sequence[str] = ()) -> list[str]:
    """The traceback shown for a remote cell that raised (``err`` is the ``TaskError``).

    ``own_names`` are the task names of the cell itself; an error raised by a task the cell
    waited on names that task instead.
    """
    name = getattr(err, "cause_type_name", "") or type(err).__name__
    fn = getattr(err, "function_name", "")
    who = label if not fn or fn in own_names else f"{label}: {fn}()"
    where = (f"{who} raised {name} on node {str(getattr(err, 'node_id', ''))[:12]}, "
             f"worker pid {getattr(err, 'pid', '?')} (task {str(getattr(err, 'task_id', ''))[:12]})")
    rule = "-" * 75
    tb = cell_traceback(getattr(err, "remote_traceback", "") or str(err)).rstrip("\n")
    return [rule, where, tb]


def with_rendering(exc: BaseException, lines: list[str]) -> BaseException:
    """``exc``, shown by IPython as ``lines`` instead of the local traceback.

    IPython calls ``_render_traceback_`` on an exception that has one (ipyparallel's
    remote errors use the same hook). Returns ``exc`` unchanged when it takes no attributes.
    """
    try:
        exc._render_traceback_ = lambda: list(lines)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass
    return exc


def cancelled_line(label: str, task_id: str, forced: bool) -> str:
    """The one line shown after an interrupt cancelled a remote cell."""
    how = ("forced: its worker process was killed" if forced
           else "it stopped with KeyboardInterrupt")
    return f"KeyboardInterrupt: cancelled {label} (task {task_id[:12]}); {how}."


def still_running_line(label: str, task_id: str, forced: bool) -> str:
    """The line shown when a cancelled remote cell has not stopped yet."""
    how = "and to kill its worker " if forced else ""
    return (f"KeyboardInterrupt: asked the cluster to cancel {label} (task {task_id[:12]}) {how}"
            "but it has not stopped yet; it may still be running.")


# ---- futures ------------------------------------------------------------------------------


def future_bundle(text: str, state_name: str) -> dict[str, str]:
    """The MIME bundle of a ``--no-block`` future."""
    colours = {"finished": "#2e7d32", "failed": "#c62828", "cancelled": "#6d4c41"}
    colour = colours.get(state_name, "#1565c0")
    return {"text/plain": text,
            "text/html": f"<code style='color:{colour}'>{html.escape(text)}</code>"}
