"""A task's arguments in, its results or a typed error out: the encoding around one run.

Whatever the task does, the worker keeps serving: user exceptions, unpicklable results
and a wrong number of returned values each become a typed error object for every return
of that task (``fail``).
"""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import cloudpickle

from runtime import _ids, _tracebacks
from runtime.exceptions import ConnectionLostError, InternalError, TaskCancelledError, TaskError
from runtime.object_store.pool import POOL_MIN
from runtime.object_store.shm import read_object
from runtime.protocol import codec, common_pb2, node_pb2

if TYPE_CHECKING:
    from runtime.api._client import CoreClient

#: How much of an error's summary a TaskResult carries (a constructor's: its death cause).
_SUMMARY_CHARS = 500
_DEATH_CAUSE_CHARS = 8000


def user_traceback(exc: BaseException) -> str:
    """The traceback without cellray's own frames (nor the standard library's under them),
    in ``exc`` and in the exceptions chained to it."""
    return _tracebacks.user_traceback(exc)


def full_traceback(exc: BaseException) -> str:
    """The traceback with every frame, for ``CELLRAY_TRACEBACK=full`` on the driver."""
    return "".join(traceback.format_exception(exc))


def error_blob(client: CoreClient, spec: common_pb2.TaskSpec, exc: BaseException) -> bytes:
    """The serialized ``TaskError`` that stands for ``exc`` (or ``exc``, if it is one)."""
    if isinstance(exc, TaskError):  # a failed dependency or nested get: pass it through
        err: BaseException = exc
    else:
        err = TaskError(f"{spec.name}() raised {type(exc).__name__}", function_name=spec.name,
                        task_id=spec.task_id.hex(), node_id=client.node_id.hex(), pid=os.getpid(),
                        remote_traceback=user_traceback(exc), cause=exc,
                        cause_type_name=type(exc).__name__, full_traceback=full_traceback(exc))
    try:
        return codec.serialize(err, error=True).to_bytes()
    except Exception:  # noqa: BLE001 - any pickling failure of the cause: send the error without it
        if isinstance(err, TaskError):
            err.cause = None
        return codec.serialize(err, error=True).to_bytes()


def returns(result: Any, spec: common_pb2.TaskSpec) -> list[Any]:
    """The values to store for a task's ``num_returns``."""
    n = spec.num_returns
    if n == 1:
        return [result]
    if n == 0:
        return []
    if inspect.isgenerator(result):  # a generator with num_returns=N: its N items
        result = list(result)
    if not isinstance(result, (tuple, list)) or len(result) != n:
        got = len(result) if isinstance(result, (tuple, list)) else 1
        raise ValueError(f"Task {spec.name}() returned {got} value{'s' if got != 1 else ''}, "
                         f"expected {n} (num_returns={n}).")
    return list(result)


def encode_return(client: CoreClient, data: common_pb2.ObjectData, oid: bytes, value: Any,
                  spec: common_pb2.TaskSpec) -> None:
    """Fill ``data`` with ``value``: inline, or written to the node's shared memory."""
    try:
        s = codec.serialize(value)
    except Exception as e:  # whatever pickling raises, the task's result is a TypeError
        raise TypeError(f"The result of {spec.name}() ({type(value).__name__}) could not be "
                        f"pickled: {e}") from e
    client.encode_object(data, oid, s, f"The result of {spec.name}()")


def arg_value(data: common_pb2.ObjectData) -> Any:
    """The value of one argument object; raises the error a failed dependency stored."""
    if data.shm_path:
        return read_object(data.shm_path)
    if codec.is_error(data.inline):
        err = codec.deserialize(data.inline)
        if isinstance(err, BaseException):
            raise err
        raise InternalError(f"argument {_ids.short(data.object_id)} holds an error that is not "
                            f"an exception: {err!r}. This is a cellray bug; please report it.")
    return codec.deserialize(data.inline)


def note_mapped(client: CoreClient, args: Iterable[common_pb2.ObjectData]) -> None:
    """Tell the node which arguments were mapped from its store (their files must never be
    reused: the task's values may outlive the objects); before the result, on the session."""
    mapped = [d.object_id for d in args if d.shm_path and d.size >= POOL_MIN]
    if mapped:
        client.send(node_pb2.ClientOp(mapped=node_pb2.Mapped(object_ids=mapped)))


def cancelled(spec: common_pb2.TaskSpec, when: str = "while running") -> TaskCancelledError:
    return TaskCancelledError(f"Task {spec.name}() (task {_ids.short(spec.task_id)}) was "
                              f"cancelled {when}.", task_id=spec.task_id.hex())


def failed(client: CoreClient, res: node_pb2.TaskResult, spec: common_pb2.TaskSpec,
           e: BaseException) -> None:
    """Make ``res`` say the task failed with ``e`` (retryable if its options say so)."""
    if isinstance(e, TaskCancelledError):
        fail(client, res, spec, codec.serialize(e, error=True).to_bytes(), str(e), False)
        return
    # A GCS that stayed away while the worker needed it (to load the function) is a
    # system failure, retried within max_retries as a dead worker would be.
    retry = isinstance(e, ConnectionLostError) or (spec.retry_exceptions and _retryable(spec, e))
    blob = error_blob(client, spec, e)
    # A failed constructor's traceback becomes the actor's death cause: send all of it.
    summary = user_traceback(e) if spec.actor_creation else f"{type(e).__name__}: {e}"
    fail(client, res, spec, blob, summary, retry)


def fail(client: CoreClient, res: node_pb2.TaskResult, spec: common_pb2.TaskSpec, blob: bytes,
         summary: str, retryable: bool) -> None:
    """Every return of ``res`` holds ``blob``; ``summary`` is what the node logs and reports."""
    del res.returns[:]
    for i in range(1, spec.num_returns + 1):
        res.returns.add(object_id=_ids.object_id(spec.task_id, i), inline=blob, size=len(blob),
                        node_id=client.node_id)
    res.failed = True
    res.retryable = retryable
    if spec.actor_creation:  # no returns to hold it: the actor keeps it as the cause of its death
        res.error = blob
    # A failed constructor's summary is the actor's death cause, shown on every call: keep
    # more of it, and always its end (the exception line) when it must be cut.
    res.error_summary = (shorten(summary, _DEATH_CAUSE_CHARS) if spec.actor_creation
                         else summary[:_SUMMARY_CHARS])


def shorten(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail around a marker."""
    if len(text) <= limit:
        return text
    marker = "\n  ...\n"
    head = (limit - len(marker)) // 3
    tail = limit - len(marker) - head
    return text[:head] + marker + text[-tail:]


def _retryable(spec: common_pb2.TaskSpec, exc: BaseException) -> bool:
    if not spec.retry_exception_types:
        return True
    try:
        types = cloudpickle.loads(spec.retry_exception_types)
    except Exception:  # noqa: BLE001 - a spec from a broken peer: its error is not retried
        return False
    try:
        return isinstance(exc, types)
    except TypeError:  # not a class or a tuple of classes
        return False
