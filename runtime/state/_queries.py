"""The queries of ``runtime.state``: one round trip to the GCS each, rows out as dataclasses.

Part of the ``runtime.state`` package: import these names from there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from runtime.api import _context
from runtime.config import Settings
from runtime.exceptions import ClientClosedError
from runtime.protocol import common_pb2, gcs_pb2
from runtime.protocol.states import TaskState as _TaskState
from runtime.state._groups import PlacementGroupState
from runtime.state._rows import ActorState, JobState, NodeState, ObjectState, SchedulerEvent, TaskState

if TYPE_CHECKING:
    from runtime.api._object_ref import ObjectRef
    from runtime.gcs.client import GcsClient

_T = TypeVar("_T")

#: The task states the runtime reports; ``list_tasks(state=...)`` also accepts any other
#: state that a task in the table has.
_KNOWN_TASK_STATES: tuple[str, ...] = tuple(_TaskState)
#: Deadline of one query, on top of the GCS client's own per-call deadline: the default of
#: ``Settings.query_timeout_s`` (the driver's client does not carry its Settings, and the
#: queries do not load the environment again).
_QUERY_TIMEOUT_S = Settings.query_timeout_s


def _query(call: Callable[[GcsClient], Coroutine[Any, Any, _T]], timeout: float | None = None) -> _T:
    """Run ``call(gcs)`` on the current connection's IO loop and return its result (within
    ``timeout`` seconds; None: ``_QUERY_TIMEOUT_S``)."""
    client = _context.current()
    gcs = client.gcs
    if gcs is None or client.closed:
        raise ClientClosedError("This cluster connection was shut down. Call runtime.init() again.")
    return client.run(call(gcs), _QUERY_TIMEOUT_S if timeout is None else timeout)


def _values(table: str, limit: int = 0) -> list[bytes]:
    """The serialized rows of ``table`` (at most ``limit`` when > 0), in the GCS's order."""
    return [value for _, value in _query(lambda gcs: gcs.list_table(table, limit))]


def _task_rows() -> list[gcs_pb2.TaskRow]:
    # Filtering and sorting work on the messages: building dataclasses for every row of a
    # large table would cost more than the whole query.
    return [gcs_pb2.TaskRow.FromString(v) for v in _values("tasks")]


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None (no limit), got {limit!r}")


def list_nodes() -> list[NodeState]:
    """Every node the cluster has known, alive or dead, oldest first.

    Examples
    --------
    >>> [n.node_id[:8] for n in list_nodes() if n.alive]       # doctest: +SKIP
    ['5f1c0a2e']
    """
    nodes = [NodeState.from_row(gcs_pb2.NodeRow.FromString(v)) for v in _values("nodes")]
    return sorted(nodes, key=lambda n: (n.start_time or 0.0, n.node_id))


def list_tasks(*, state: str | None = None, job_id: str | None = None, name: str | None = None,
               limit: int | None = 1000) -> list[TaskState]:
    """Tasks the GCS holds, newest first (by submit time), optionally filtered.

    Parameters
    ----------
    state : str, optional
        Only tasks in this state ("RUNNING", "FAILED", ...; any case).
    job_id : str, optional
        Only tasks of this job (hex id, as ``rt.get_runtime_context().get_job_id()``).
    name : str, optional
        Only tasks of this function name.
    limit : int or None
        At most this many (the newest); None for all.

    Raises
    ------
    ValueError
        For a ``limit`` below 1, or a ``state`` that is neither a known task state nor the
        state of any task in the table (a typo would otherwise silently match nothing).

    Examples
    --------
    >>> [t.duration for t in list_tasks(state="FINISHED", limit=3)]   # doctest: +SKIP
    [0.0021, 0.0019, 0.0020]
    """
    _check_limit(limit)
    if job_id is not None:
        try:
            job = bytes.fromhex(job_id)
        except ValueError:
            raise ValueError(f"job_id must be a hex job id, got {job_id!r}") from None
    rows = _task_rows()
    if state is not None:
        state = state.upper()
        if state not in _KNOWN_TASK_STATES and all(r.state != state for r in rows):
            raise ValueError(f"unknown task state {state!r}; task states are "
                             f"{', '.join(_KNOWN_TASK_STATES)}")
        rows = [r for r in rows if r.state == state]
    if job_id is not None:
        rows = [r for r in rows if r.job_id == job]
    if name is not None:
        rows = [r for r in rows if r.name == name]
    rows.sort(key=lambda r: r.submit_time or r.start_time, reverse=True)
    return [TaskState.from_row(r) for r in (rows if limit is None else rows[:limit])]


def get_task(task_id: str | ObjectRef) -> TaskState | None:
    """The task with this hex id (or the task that produces this ObjectRef); None if unknown.

    Raises ``ValueError`` when ``task_id`` is not a hex task id.

    Examples
    --------
    >>> ref = f.remote(1)                       # doctest: +SKIP
    >>> get_task(ref).state                     # doctest: +SKIP
    'RUNNING'
    """
    if not isinstance(task_id, str):
        if not callable(getattr(task_id, "task_id", None)):
            raise TypeError(f"get_task() expects a hex task id or an ObjectRef, got {type(task_id).__name__}")
        task_id = task_id.task_id()  # an ObjectRef
    try:
        key = bytes.fromhex(task_id)
    except ValueError:
        key = b""
    if not key:
        raise ValueError(f"get_task() expects a task id as a hex string, got {task_id!r}")
    raw = _query(lambda gcs: gcs.get_entry("tasks", key))
    return None if raw is None else TaskState.from_row(gcs_pb2.TaskRow.FromString(raw))


def list_objects(limit: int | None = 1000) -> list[ObjectState]:
    """Objects in the nodes' shared-memory stores (at most ``limit``; None for all).

    Small objects travel inline and are not listed; see ``ObjectState``.
    """
    _check_limit(limit)
    return [ObjectState.from_row(gcs_pb2.ObjectRow.FromString(v)) for v in _values("objects", limit or 0)]


def list_jobs() -> list[JobState]:
    """Every job (driver) the cluster has known, oldest first, finished ones included."""
    jobs = [JobState.from_row(gcs_pb2.JobRow.FromString(v)) for v in _values("jobs")]
    return sorted(jobs, key=lambda j: (j.start_time or 0.0, j.job_id))


def list_actors(*, state: str | None = None) -> list[ActorState]:
    """Actors, oldest first; ``state`` ("ALIVE", "DEAD", ...; any case) keeps only those."""
    actors = [ActorState.from_row(gcs_pb2.ActorRow.FromString(v)) for v in _values("actors")]
    if state is not None:
        actors = [a for a in actors if a.state == state.upper()]
    return sorted(actors, key=lambda a: (a.start_time or 0.0, a.actor_id))


def list_placement_groups(*, state: str | None = None) -> list[PlacementGroupState]:
    """Placement groups, oldest first; ``state`` ("PENDING", "CREATED", ...; any case) keeps
    only those. A PENDING group's ``why`` says what it waits for.

    Examples
    --------
    >>> [(g.strategy, g.state, g.why) for g in list_placement_groups(state="pending")]  # doctest: +SKIP
    [('STRICT_PACK', 'PENDING', 'infeasible: STRICT_PACK needs one node with {CPU: 64} ...')]
    """
    rows = [gcs_pb2.PlacementGroupRow.FromString(v) for v in _values("placement_groups")]
    if state is not None:
        rows = [r for r in rows if r.state == state.upper()]
    rows.sort(key=lambda r: (r.create_time, r.placement_group_id))
    return [PlacementGroupState.from_row(r) for r in rows]


def list_events(limit: int | None = 100) -> list[SchedulerEvent]:
    """The latest scheduler decisions (SCHEDULED, SPILLED, INFEASIBLE), newest last.

    The GCS keeps a bounded ring of them (10 000 by default); ``limit`` keeps the newest
    few of those (None: all).
    """
    _check_limit(limit)
    values = _values("events")  # oldest first: the keys are sequence numbers
    if limit is not None:
        values = values[-limit:]
    return [SchedulerEvent.from_proto(common_pb2.TaskEvent.FromString(v)) for v in values]


@overload
def summarize_tasks(by: Literal["state"] = "state") -> dict[str, int]: ...
@overload
def summarize_tasks(by: Literal["name"]) -> dict[str, dict[str, int]]: ...


def summarize_tasks(by: str = "state") -> dict[str, int] | dict[str, dict[str, int]]:
    """How many tasks the GCS holds in each state, or per function name and state.

    Parameters
    ----------
    by : {"state", "name"}
        "state": ``{state: count}``. "name": ``{name: {state: count}}``.

    Examples
    --------
    >>> summarize_tasks()                        # doctest: +SKIP
    {'FINISHED': 8, 'FAILED': 1, 'RUNNING': 2}
    >>> summarize_tasks(by="name")               # doctest: +SKIP
    {'square': {'FINISHED': 8, 'RUNNING': 2}, 'boom': {'FAILED': 1}}
    """
    if by not in ("state", "name"):
        raise ValueError(f'summarize_tasks(by=...) takes "state" or "name", got {by!r}')
    rows = _task_rows()
    if by == "state":
        return dict(Counter(r.state for r in rows))
    per_name: dict[str, Counter[str]] = {}
    for r in rows:
        per_name.setdefault(r.name, Counter())[r.state] += 1
    return {name: dict(counts) for name, counts in per_name.items()}
