"""Checks of what clients send the GCS, before anything is stored: a bad field is refused
(``InvalidRequestError``, INVALID_ARGUMENT on the wire) with its name, and one malformed
request can never break a read of the table for everyone else."""

from __future__ import annotations

import math
from collections.abc import Iterable

from google.protobuf.message import DecodeError

from runtime._ids import OBJECT_ID_LEN, TASK_ID_LEN
from runtime.exceptions import InvalidRequestError
from runtime.protocol import common_pb2, gcs_pb2
from runtime.protocol.checks import resources_problem
from runtime.protocol.states import ActorState, TaskState

#: Longest host name, resource name or label a node may report.
_MAX_NAME = 255


def check_node_row(row: gcs_pb2.NodeRow) -> None:
    """A node's registration: 16-byte id, ``host:port`` address, sane pid, names and load."""
    if len(row.node_id) != 16:
        raise InvalidRequestError(f"node.node_id must be 16 bytes, got {len(row.node_id)}")
    host, sep, port = row.address.rpartition(":")
    if not sep or not host or any(c.isspace() for c in host) or len(host) > _MAX_NAME:
        raise InvalidRequestError(f"node.address must be 'host:port', got {row.address[:80]!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequestError(f"node.address must end in a port 1..65535, got {port[:20]!r}")
    if row.pid < 0:
        raise InvalidRequestError(f"node.pid must be >= 0, got {row.pid}")
    for name in ("hostname", "shm_dir"):
        if len(getattr(row, name)) > _MAX_NAME:
            raise InvalidRequestError(f"node.{name} is longer than {_MAX_NAME} characters")
    for key, value in row.labels.items():
        if not key or len(key) > _MAX_NAME or len(value) > _MAX_NAME:
            raise InvalidRequestError(f"node.labels[{key[:40]!r}]: keys and values must be 1..{_MAX_NAME} "
                                      "characters")
    check_load(row.load, "node.load")


def check_load(load: common_pb2.NodeLoad, field: str = "load") -> None:
    """A node's load (registration or heartbeat): finite, non-negative amounts."""
    for name, table in (("total", load.total), ("available", load.available)):
        if why := resources_problem(f"{field}.{name}", table):
            raise InvalidRequestError(why)
    for name in ("queue_length", "store_used", "store_capacity", "num_workers", "memory_used",
                 "memory_total", "store_spilled", "store_spilled_total"):
        if getattr(load, name) < 0:
            raise InvalidRequestError(f"{field}.{name} must be >= 0, got {getattr(load, name)}")


#: Longest free text a row may hold (death causes, details, entry points).
_MAX_TEXT = 64 * 1024
_ACTOR_STATES = frozenset(s.value for s in ActorState)
_TASK_STATES = frozenset(s.value for s in TaskState)


def _id(value: bytes, field: str, *, length: int = TASK_ID_LEN, empty: bool = False) -> None:
    if (empty and not value) or len(value) == length:
        return
    extra = " (or empty)" if empty else ""
    raise InvalidRequestError(f"{field} must be {length} bytes{extra}, got {len(value)}")


def _text(value: str, field: str, limit: int = _MAX_NAME) -> None:
    if len(value) > limit:
        raise InvalidRequestError(f"{field} is longer than {limit} characters ({len(value)})")


def _time(value: float, field: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise InvalidRequestError(f"{field} must be a finite time >= 0, got {value}")


def _count(value: int, field: str, low: int = 0) -> None:
    if value < low:
        raise InvalidRequestError(f"{field} must be >= {low}, got {value}")


def check_actor_row(row: gcs_pb2.ActorRow) -> None:
    """An actor's row (``PutActor``): ids, a known state, counts, and a creation spec that parses."""
    _id(row.actor_id, "actor.actor_id")
    if row.state not in _ACTOR_STATES:
        raise InvalidRequestError(f"actor.state must be one of {', '.join(sorted(_ACTOR_STATES))}, "
                                  f"got {row.state[:40]!r}")
    _id(row.node_id, "actor.node_id", empty=True)
    _id(row.worker_id, "actor.worker_id", empty=True)
    _id(row.owner_id, "actor.owner_id", empty=True)
    for name in ("class_name", "name", "namespace", "node_address"):
        _text(getattr(row, name), f"actor.{name}")
    _text(row.death_cause, "actor.death_cause", _MAX_TEXT)
    _count(row.pid, "actor.pid")
    _count(row.num_restarts, "actor.num_restarts")
    _count(row.max_restarts, "actor.max_restarts", -1)
    _count(row.pending_calls, "actor.pending_calls")
    _time(row.start_time, "actor.start_time")
    if row.creation_spec:
        try:
            common_pb2.TaskSpec.FromString(row.creation_spec)
        except DecodeError:
            raise InvalidRequestError("actor.creation_spec is not a serialized TaskSpec") from None


def check_job_row(row: gcs_pb2.JobRow) -> None:
    """A job's registration: its driver's pid and host, and times."""
    _count(row.driver_pid, "job.driver_pid")
    _text(row.driver_host, "job.driver_host")
    _text(row.entrypoint, "job.entrypoint", 1 << 20)
    _time(row.start_time, "job.start_time")
    _time(row.end_time, "job.end_time")


def check_function_row(row: gcs_pb2.FunctionRow) -> None:
    """An exported function: an id (its content hash) and a name."""
    if not 1 <= len(row.function_id) <= 64:
        raise InvalidRequestError(f"function.function_id must be 1..64 bytes, got {len(row.function_id)}")
    _text(row.name, "function.name", 1024)


def check_events(events: Iterable[common_pb2.TaskEvent],
                 objects: Iterable[gcs_pb2.ObjectLocationUpdate]) -> None:
    """Task events and object locations a node reports (``ReportEvents``), all of them
    before any is applied."""
    for i, ev in enumerate(events):
        field = f"task_events[{i}]"
        _id(ev.task_id, f"{field}.task_id")
        if ev.state not in _TASK_STATES:
            raise InvalidRequestError(f"{field}.state must be a task state, got {ev.state[:40]!r}")
        _id(ev.node_id, f"{field}.node_id", empty=True)
        _id(ev.target_node_id, f"{field}.target_node_id", empty=True)
        _id(ev.actor_id, f"{field}.actor_id", empty=True)
        _text(ev.name, f"{field}.name", 1024)
        _text(ev.scheduler, f"{field}.scheduler")
        _text(ev.detail, f"{field}.detail", _MAX_TEXT)
        _count(ev.worker_pid, f"{field}.worker_pid")
        _count(ev.attempt, f"{field}.attempt")
        _time(ev.time, f"{field}.time")
    for i, loc in enumerate(objects):
        _id(loc.object_id, f"objects[{i}].object_id", length=OBJECT_ID_LEN)
        _id(loc.node_id, f"objects[{i}].node_id")
        _id(loc.owner_id, f"objects[{i}].owner_id", empty=True)
        _count(loc.size, f"objects[{i}].size")


def check_actor_name(namespace: str, name: str) -> None:
    """A name claimed, looked up or released in a namespace (empty ones are the state's
    to refuse)."""
    _text(name, "name")
    _text(namespace, "namespace")


def check_scheduler(name: str, address: str) -> None:
    """A global scheduler replica registering: a name and a ``host:port`` address (empty
    ones are the state's to refuse)."""
    if not name or not address:
        return
    _text(name, "name")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or len(host) > _MAX_NAME:
        raise InvalidRequestError(f"address must be 'host:port', got {address[:80]!r}")
