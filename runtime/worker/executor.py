"""Running one task in a worker: load the function, fill the arguments, store results.

Whatever the task does, the worker keeps serving: user exceptions, unpicklable results,
a wrong number of returned values and a function that cannot be loaded each become a
typed error object for every return of that task.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
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
#: Tasks running in the main thread now (read by the IO thread's cancel handler).
_running_ids: set[bytes] = set()
#: The main thread's task stack (ids, innermost last): a blocked task's worker runs the
#: tasks it waits for on top of it, and a cancel of a task below the top must wait for
#: the tasks above it to return (the IO thread reads it; the GIL keeps it consistent).
_main_stack: list[bytes] = []
#: Cancels that reached this worker for a task it was given but has not started yet
#: (its ExecuteTask and the cancel came in one batch). Bounded: a cancel that crossed
#: the task's result on the wire leaves an entry nobody removes.
_cancelled_early: dict[bytes, None] = {}
_CANCELLED_EARLY_MAX = 1024

logger = logging.getLogger(__name__)
#: GPU indices reserved for each running task (and for this worker's actor, if any).
gpu_ids: dict[bytes, list[int]] = {}


def _set_visible_gpus(ids: list[int]) -> str | None:
    """Point CUDA_VISIBLE_DEVICES at ``ids``; return the previous value to restore."""
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in ids)
    return old


def _restore_visible_gpus(old: str | None) -> None:
    if old is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = old


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


def _prepare(client: CoreClient, ex: node_pb2.ExecuteTask) -> tuple[Any, list[Any], dict[str, Any]]:
    spec = ex.spec
    if spec.actor_id and not spec.actor_creation:
        assert actor is not None, "an actor call reached a worker that is not an actor"
        fn = getattr(actor.instance, spec.method)
    else:
        fn = load_function(client, spec.function_id, spec.name)
    args, kwargs = _args.decode(spec.args, [_arg_value(d) for d in ex.args])
    return fn, args, kwargs


def _finish(client: CoreClient, res: node_pb2.TaskResult, spec: common_pb2.TaskSpec, value: Any) -> None:
    if spec.actor_creation:
        become_actor(client, spec, value)
        return
    for i, v in enumerate(_returns(value, spec), 1):
        _encode_return(client, res.returns.add(), _ids.object_id(spec.task_id, i), v, spec)


def _failed(client: CoreClient, res: node_pb2.TaskResult, spec: common_pb2.TaskSpec,
            e: BaseException) -> None:
    if isinstance(e, TaskCancelledError):
        _fail(client, res, spec, codec.serialize(e, error=True).to_bytes(), str(e), False)
        return
    retry = spec.retry_exceptions and _retryable(spec, e)
    blob = _error_blob(client, spec, e)
    # A failed constructor's traceback becomes the actor's death cause: send all of it.
    summary = _user_traceback(e) if spec.actor_creation else f"{type(e).__name__}: {e}"
    _fail(client, res, spec, blob, summary, retry)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        flush_task = getattr(stream, "flush_task", None)
        if flush_task is not None:
            flush_task()


def run_one(client: CoreClient, ex: node_pb2.ExecuteTask) -> None:
    """Run the task in ``ex`` in this thread and send its TaskResult."""
    spec = ex.spec
    op = node_pb2.ClientOp()
    res = op.result
    res.task_id = spec.task_id
    token = client.push_task(spec)
    _running_ids.add(spec.task_id)
    on_main = threading.current_thread() is threading.main_thread()
    if on_main:
        _main_stack.append(spec.task_id)
    ids = list(ex.gpu_ids)
    gpu_ids[spec.task_id] = ids
    # An actor keeps its GPUs for life; a task only while it runs.
    old_visible = _set_visible_gpus(ids) if ids else None
    value: Any = None
    try:
        try:
            if spec.task_id in _cancelled_early:
                del _cancelled_early[spec.task_id]
                raise _cancelled(spec, "before it started")
            fn, args, kwargs = _prepare(client, ex)
            value = fn(*args, **kwargs)
            _finish(client, res, spec, value)
        except KeyboardInterrupt:
            if spec.task_id not in _cancel_requested:
                raise
            raise _cancelled(spec) from None
    except Exception as e:
        _failed(client, res, spec, e)
    finally:
        _running_ids.discard(spec.task_id)
        _cancel_requested.discard(spec.task_id)
        if on_main:
            _main_stack.pop()
        if not spec.actor_creation:
            gpu_ids.pop(spec.task_id, None)
            if ids:
                _restore_visible_gpus(old_visible)
        _flush_output()
        client.pop_task(token)
    client.send(op)
    # `value` is dropped only now, after the result (and its nested refs) is queued.
    del value
    if on_main and _main_stack and _main_stack[-1] in _cancel_requested:
        # This task ran nested on top of a task that was cancelled meanwhile (the SIGINT
        # then found this one on top and was ignored): interrupt that task now.
        raise KeyboardInterrupt


def _cancelled(spec: common_pb2.TaskSpec, when: str = "while running") -> TaskCancelledError:
    return TaskCancelledError(f"Task {spec.name}() (task {_ids.short(spec.task_id)}) was "
                              f"cancelled {when}.", task_id=spec.task_id.hex())


async def run_one_async(client: CoreClient, ex: node_pb2.ExecuteTask) -> None:
    """Run an async actor method on the actor's event loop and send its TaskResult."""
    spec = ex.spec
    op = node_pb2.ClientOp()
    res = op.result
    res.task_id = spec.task_id
    token = client.push_task(spec)
    value: Any = None
    try:
        fn, args, kwargs = _prepare(client, ex)
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        _finish(client, res, spec, value)
    except asyncio.CancelledError:
        _failed(client, res, spec, _cancelled(spec))
    except Exception as e:
        _failed(client, res, spec, e)
    finally:
        client.pop_task(token)
    client.send(op)
    del value


class ActorRuntime:
    """This worker's actor: its instance and how its calls run (in order, threads, or a loop)."""

    def __init__(self, instance: Any, max_concurrency: int, is_async: bool) -> None:
        self.instance = instance
        self.is_async = is_async
        self.pool = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sem: asyncio.Semaphore | None = None
        self.async_tasks: dict[bytes, asyncio.Task[None]] = {}
        self.gpu_ids: list[int] = []
        if is_async:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="actor-loop", daemon=True).start()
            self.limit = max_concurrency
        elif max_concurrency > 1:
            from concurrent.futures import ThreadPoolExecutor
            self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="actor")

    def submit(self, client: CoreClient, ex: node_pb2.ExecuteTask) -> None:
        """Run one call: here (in order), on the pool, or on the loop."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._start_async, client, ex)
        elif self.pool is not None:
            self.pool.submit(_run_pooled, client, ex)
        else:
            run_one(client, ex)

    def _start_async(self, client: CoreClient, ex: node_pb2.ExecuteTask) -> None:
        if self.sem is None:
            self.sem = asyncio.Semaphore(self.limit)
        sem = self.sem
        task_id = ex.spec.task_id

        async def limited() -> None:
            async with sem:
                try:
                    await run_one_async(client, ex)
                except (SystemExit, KeyboardInterrupt) as e:
                    # Escaping here would stop the loop, and every later call would hang.
                    _end_process(e)

        assert self.loop is not None
        t = self.loop.create_task(limited())
        self.async_tasks[task_id] = t
        t.add_done_callback(lambda _: self.async_tasks.pop(task_id, None))

    def cancel(self, task_id: bytes) -> bool:
        t = self.async_tasks.get(task_id)
        if t is None or self.loop is None:
            return False
        self.loop.call_soon_threadsafe(t.cancel)
        return True


def _run_pooled(client: CoreClient, ex: node_pb2.ExecuteTask) -> None:
    """``run_one`` on a thread of a threaded actor's pool."""
    try:
        run_one(client, ex)
    except (SystemExit, KeyboardInterrupt) as e:
        # The pool's future would swallow it: no result, and the caller waits forever.
        _end_process(e)


def _end_process(exc: BaseException) -> None:
    """A method of a threaded or async actor raised SystemExit (``sys.exit()``) or the like.

    In the main thread that ends the worker and so the actor (its calls then fail with
    ActorDiedError, and it restarts if allowed); do the same from the pool or the loop.
    """
    code = exc.code if isinstance(exc, SystemExit) else 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    _flush_output()
    os._exit(code)


#: Set when this worker becomes an actor.
actor: ActorRuntime | None = None


def become_actor(client: CoreClient, spec: common_pb2.TaskSpec, instance: Any) -> None:
    global actor
    options = json.loads(spec.actor_options or b"{}")
    cls = type(instance)
    is_async = any(inspect.iscoroutinefunction(getattr(cls, n, None))
                   for n in dir(cls) if not n.startswith("__"))
    default = 1000 if is_async else 1
    actor = ActorRuntime(instance, int(options.get("max_concurrency") or default), is_async)
    actor.gpu_ids = gpu_ids.pop(spec.task_id, [])
    client.is_actor = True


def _fail(client: CoreClient, res: node_pb2.TaskResult, spec: common_pb2.TaskSpec, blob: bytes,
          summary: str, retryable: bool) -> None:
    del res.returns[:]
    for i in range(1, spec.num_returns + 1):
        res.returns.add(object_id=_ids.object_id(spec.task_id, i), inline=blob, size=len(blob),
                        node_id=client.node_id)
    res.failed = True
    res.retryable = retryable
    # A failed constructor's summary is the actor's death cause, shown on every call: keep
    # more of it, and always its end (the exception line) when it must be cut.
    res.error_summary = _shorten(summary, 8000) if spec.actor_creation else summary[:500]


def _shorten(text: str, limit: int) -> str:
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
        if actor is not None and actor.cancel(c.task_id):
            return
        if c.task_id in _running_ids:
            _cancel_requested.add(c.task_id)
            if c.task_id in _main_stack and _main_stack[-1] != c.task_id:
                logger.info("cancel of task %s deferred: task %s runs nested on top of it; it is "
                            "interrupted when that one returns", _ids.short(c.task_id),
                            _ids.short(_main_stack[-1]))
                return
            signal.pthread_kill(main_ident, signal.SIGINT)
        else:  # given to this worker and not started yet: it fails as soon as it starts
            _cancelled_early[c.task_id] = None
            while len(_cancelled_early) > _CANCELLED_EARLY_MAX:
                del _cancelled_early[next(iter(_cancelled_early))]

    signal.signal(signal.SIGINT, on_sigint)
    client.cancel_handler = on_cancel


def current_gpu_ids(client: CoreClient) -> list[int]:
    """GPU indices reserved for the task or actor running in the caller."""
    stack = client.task_stack
    if stack:
        ids = gpu_ids.get(stack[-1].task_id)
        # An actor's method calls carry no GPU ids of their own (run_one records [] for
        # them): the actor's, reserved at creation, apply.
        if ids:
            return list(ids)
    if actor is not None:
        return list(actor.gpu_ids)
    return []
