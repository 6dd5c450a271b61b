"""Running one task in a worker: load the function, fill the arguments, store results.

Whatever the task does, the worker keeps serving: user exceptions, unpicklable results,
a wrong number of returned values and a function that cannot be loaded each become a
typed error object for every return of that task.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any

import cloudpickle

from runtime import _ids
from runtime.api import _args
from runtime.exceptions import ObjectStoreFullError, TaskCancelledError, TaskError
from runtime.object_store.shm import read_object, write_object
from runtime.protocol import codec, common_pb2, node_pb2

if TYPE_CHECKING:
    from runtime.api._client import CoreClient

_RUNTIME_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_functions: dict[bytes, Any] = {}
#: Task id whose cancellation was asked while it runs (SIGINT raises in its frame).
_cancel_requested: set[bytes] = set()


class _LoadError(Exception):
    pass


def load_function(client: CoreClient, function_id: bytes, name: str) -> Any:
    fn = _functions.get(function_id)
    if fn is not None:
        return fn
    assert client.gcs is not None
    row = client.run(client.gcs.get_function(function_id), 60.0)
    if row is None:
        raise _LoadError(f"function {name} ({function_id.hex()[:12]}) is not in the GCS")
    try:
        fn = cloudpickle.loads(row.pickled)
    except Exception as e:
        e.add_note(f"cellray: could not load {name}() on this worker (pid {os.getpid()}): the "
                   "worker's Python environment lacks something the function needs. Install it "
                   "on every node.")
        raise
    _functions[function_id] = fn
    return fn


def _user_traceback(exc: BaseException) -> str:
    """The traceback without cellray's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _error_blob(client: CoreClient, spec: common_pb2.TaskSpec, exc: BaseException) -> bytes:
    if isinstance(exc, TaskError):  # a failed dependency or nested get: pass it through
        err: BaseException = exc
    else:
        err = TaskError(f"{spec.name}() raised {type(exc).__name__}", function_name=spec.name,
                        task_id=spec.task_id.hex(), node_id=client.node_id.hex(), pid=os.getpid(),
                        remote_traceback=_user_traceback(exc), cause=exc,
                        cause_type_name=type(exc).__name__)
    try:
        return codec.serialize(err, error=True).to_bytes()
    except Exception:
        if isinstance(err, TaskError):
            err.cause = None
        return codec.serialize(err, error=True).to_bytes()


def _returns(result: Any, spec: common_pb2.TaskSpec) -> list[Any]:
    n = spec.num_returns
    if n == 1:
        return [result]
    if n == 0:
        return []
    if not isinstance(result, (tuple, list)) or len(result) != n:
        got = len(result) if isinstance(result, (tuple, list)) else 1
        raise ValueError(f"Task {spec.name}() returned {got} value{'s' if got != 1 else ''}, "
                         f"expected {n} (num_returns={n}).")
    return list(result)


def _encode_return(client: CoreClient, data: common_pb2.ObjectData, oid: bytes, value: Any,
                   spec: common_pb2.TaskSpec) -> None:
    try:
        s = codec.serialize(value)
    except Exception as e:
        raise TypeError(f"The result of {spec.name}() ({type(value).__name__}) could not be "
                        f"pickled: {e}") from e
    data.object_id = oid
    data.size = s.nbytes
    data.node_id = client.node_id
    if s.contained_refs:
        data.nested_refs.extend(s.contained_refs)
    if s.nbytes > client.inline_threshold:
        if s.nbytes > client.store_capacity:
            raise ObjectStoreFullError(
                f"The result of {spec.name}() is {s.nbytes / 2**20:.1f} MiB, more than the object "
                f"store's {client.store_capacity / 2**20:.1f} MiB. Start the cluster with a larger "
                "object_store_memory, or return smaller pieces.")
        path = os.path.join(client.shm_dir, oid.hex())
        write_object(path, s)
        data.shm_path = path
    else:
        data.inline = s.to_bytes()


def _arg_value(data: common_pb2.ObjectData) -> Any:
    if data.shm_path:
        return read_object(data.shm_path)
    if codec.is_error(data.inline):
        raise codec.deserialize(data.inline)
    return codec.deserialize(data.inline)


def run_one(client: CoreClient, ex: node_pb2.ExecuteTask) -> None:
    """Run the task in ``ex`` and send its TaskResult."""
    spec = ex.spec
    op = node_pb2.ClientOp()
    res = op.result
    res.task_id = spec.task_id
    client.task_stack.append(spec)
    value: Any = None
    try:
        try:
            fn = load_function(client, spec.function_id, spec.name)
            args, kwargs = _args.decode(spec.args, [_arg_value(d) for d in ex.args])
            value = fn(*args, **kwargs)
            values = _returns(value, spec)
            for i, v in enumerate(values, 1):
                _encode_return(client, res.returns.add(), _ids.object_id(spec.task_id, i), v, spec)
        except KeyboardInterrupt:
            if spec.task_id not in _cancel_requested:
                raise
            raise TaskCancelledError(f"Task {spec.name}() (task {_ids.short(spec.task_id)}) was "
                                     "cancelled while running.", task_id=spec.task_id.hex()) from None
    except TaskCancelledError as e:
        _fail(client, res, spec, codec.serialize(e, error=True).to_bytes(), str(e), False)
    except Exception as e:
        retry = spec.retry_exceptions and _retryable(spec, e)
        _fail(client, res, spec, _error_blob(client, spec, e), f"{type(e).__name__}: {e}", retry)
    finally:
        _cancel_requested.discard(spec.task_id)
        for stream in (sys.stdout, sys.stderr):
            flush_task = getattr(stream, "flush_task", None)
            if flush_task is not None:
                flush_task()
        client.task_stack.pop()
    client.send(op)
    # `value` is dropped only now, after the result (and its nested refs) is queued.
    del value


def _fail(client: CoreClient, res: node_pb2.TaskResult, spec: common_pb2.TaskSpec, blob: bytes,
          summary: str, retryable: bool) -> None:
    del res.returns[:]
    for i in range(1, spec.num_returns + 1):
        res.returns.add(object_id=_ids.object_id(spec.task_id, i), inline=blob, size=len(blob),
                        node_id=client.node_id)
    res.failed = True
    res.retryable = retryable
    res.error_summary = summary[:500]


def _retryable(spec: common_pb2.TaskSpec, exc: BaseException) -> bool:
    if not spec.retry_exception_types:
        return True
    types = cloudpickle.loads(spec.retry_exception_types)
    return isinstance(exc, types)


def install_cancel_handler(client: CoreClient) -> None:
    """Cancelling a running task interrupts the main thread with SIGINT."""
    main_ident = threading.main_thread().ident
    assert main_ident is not None

    def on_sigint(signum: int, frame: Any) -> None:
        stack = client.task_stack
        if stack and stack[-1].task_id in _cancel_requested:
            raise KeyboardInterrupt

    def on_cancel(c: node_pb2.CancelTask) -> None:
        stack = client.task_stack
        if any(s.task_id == c.task_id for s in stack):
            _cancel_requested.add(c.task_id)
            signal.pthread_kill(main_ident, signal.SIGINT)

    signal.signal(signal.SIGINT, on_sigint)
    client.cancel_handler = on_cancel
