"""``timeline``: recent tasks as a Chrome trace (``chrome://tracing``, Perfetto), as Ray's
``ray.timeline``."""

from __future__ import annotations

import json
import os
from typing import Any

from runtime.state._queries import list_tasks


def timeline(filename: str | os.PathLike[str] | None = None) -> list[dict[str, Any]] | None:
    """Recent tasks that ran, as Chrome trace events: one bar per task attempt, from its
    start to its end, one row per worker process, one process group per node.

    The GCS keeps a bounded number of tasks (the newest), so this covers recent work.
    Open the file in ``chrome://tracing`` or https://ui.perfetto.dev.

    Parameters
    ----------
    filename
        Where to write the trace (JSON). None: return the events instead.

    Returns
    -------
    list[dict] | None
        The events when ``filename`` is None, else None.

    Examples
    --------
    >>> import runtime as rt
    >>> rt.timeline("/tmp/trace.json")                         # doctest: +SKIP
    >>> events = rt.timeline()                                 # doctest: +SKIP
    >>> events[0]["name"], events[0]["ph"]                     # doctest: +SKIP
    ('f', 'X')
    """
    events: list[dict[str, Any]] = []
    nodes: dict[str, int] = {}
    for task in list_tasks(limit=None):
        if task.start_time is None:
            continue  # never ran
        end = task.end_time if task.end_time is not None else task.start_time
        node = task.node_id or "unknown"
        pid = nodes.setdefault(node, len(nodes) + 1)
        events.append({
            "name": task.name, "cat": "actor_task" if task.actor_id else "task", "ph": "X",
            "ts": task.start_time * 1e6, "dur": max(end - task.start_time, 0.0) * 1e6,
            "pid": pid, "tid": task.worker_pid or 0,
            "args": {"task_id": task.task_id, "state": task.state, "attempt": task.attempt,
                     "node_id": node, "actor_id": task.actor_id, "detail": task.detail},
        })
    for node, pid in nodes.items():  # name each node's row group
        events.append({"name": "process_name", "ph": "M", "pid": pid,
                       "args": {"name": f"node {node[:12]}"}})
    if filename is None:
        return events
    with open(filename, "w", encoding="utf-8") as f:
        json.dump(events, f)
    return None
