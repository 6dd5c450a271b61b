"""Read and watch the cluster's state: nodes, tasks, objects, jobs, actors, placement groups,
scheduler events.

This is the read side of cellray, for a user at a prompt and for dashboards (the notebook
widgets are built on this module alone). Every row of the Global Control Store (GCS) comes
out as a frozen dataclass with hex ids and plain Python values; nothing here returns
protobuf messages.

- **Queries**, one round trip to the GCS each: ``list_nodes``, ``list_tasks``, ``get_task``,
  ``list_objects``, ``list_jobs``, ``list_actors``, ``list_placement_groups``, ``list_events``,
  ``summarize_tasks``, and ``get_head`` (the GCS's address and pid, where it keeps its
  tables, how many times the head restarted it).
- **Subscriptions**: ``subscribe(tables, callback)`` delivers a snapshot of the tables and
  then every change as it happens, on a background thread, until ``Subscription.close()``.
- **Driver hooks** for the notebook extension: ``add_output_handler`` (what remote tasks
  print), ``set_origin_provider`` (tag submitted work so that its output finds the cell that
  started it), ``add_task_event_handler`` (warnings the scheduler sends this driver),
  ``set_warning_handler`` (where those warnings are shown) and
  ``add_submit_handler`` (each task the driver submits, so a cell can cancel its own).

Everything uses the connection made by ``runtime.init()`` and raises ``RuntimeError`` when
there is none. Times are unix seconds (``time.time()``); ids are hex strings.

Examples
--------
>>> import runtime as rt
>>> from runtime import state
>>> rt.init(num_cpus=2)                                        # doctest: +SKIP
>>> [(n.hostname, n.resources_total) for n in state.list_nodes()]  # doctest: +SKIP
[('box', {'CPU': 2.0})]
>>> state.summarize_tasks()                                    # doctest: +SKIP
{'FINISHED': 10, 'RUNNING': 2}
>>> sub = state.subscribe(["tasks"], lambda c: print(c.table, c.key, c.value))  # doctest: +SKIP
>>> sub.close()                                                # doctest: +SKIP
"""

from __future__ import annotations

from runtime.state._format import format_bytes
from runtime.state._groups import BundleState, PlacementGroupState
from runtime.state._head import HeadState, gcs_outage, get_head
from runtime.state._hooks import (
    OutputLines,
    SubmittedTask,
    add_output_handler,
    add_submit_handler,
    add_task_event_handler,
    remove_output_handler,
    remove_submit_handler,
    remove_task_event_handler,
    set_get_progress,
    set_origin_provider,
    set_warning_handler,
)
from runtime.state._queries import (
    get_task,
    list_actors,
    list_events,
    list_jobs,
    list_nodes,
    list_objects,
    list_placement_groups,
    list_tasks,
    summarize_tasks,
)
from runtime.state._rows import (
    TABLES,
    TERMINAL_TASK_STATES,
    ActorState,
    GpuState,
    JobState,
    NodeState,
    ObjectState,
    Row,
    SchedulerEvent,
    TaskState,
    decode_row,
)
from runtime.state._subscription import Change, Subscription, subscribe
from runtime.state._subscription import _change_of as _change_of  # used by the unit tests

__all__ = [
    "TABLES",
    "TERMINAL_TASK_STATES",
    "ActorState",
    "BundleState",
    "Change",
    "GpuState",
    "HeadState",
    "JobState",
    "NodeState",
    "ObjectState",
    "OutputLines",
    "PlacementGroupState",
    "Row",
    "SchedulerEvent",
    "SubmittedTask",
    "Subscription",
    "TaskState",
    "add_output_handler",
    "add_submit_handler",
    "add_task_event_handler",
    "decode_row",
    "format_bytes",
    "gcs_outage",
    "get_head",
    "get_task",
    "list_actors",
    "list_events",
    "list_jobs",
    "list_nodes",
    "list_objects",
    "list_placement_groups",
    "list_tasks",
    "remove_output_handler",
    "remove_submit_handler",
    "remove_task_event_handler",
    "set_get_progress",
    "set_origin_provider",
    "set_warning_handler",
    "subscribe",
    "summarize_tasks",
]
