"""Running the tasks of one worker: load the function, fill the arguments, store results.

``Executor`` holds what a worker keeps between tasks: the functions it loaded, the GPUs
reserved for each running task, the cancel bookkeeping (``cancels.Cancels``) and, once
it became one, its actor (``actor.ActorRuntime``). Whatever a task does, the worker keeps
serving: its failures become typed error objects (``results``).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import cloudpickle

from runtime import _ids
from runtime.actor import ActorExit
from runtime.api import _args
from runtime.exceptions import ActorDiedError, FunctionNotFoundError
from runtime.protocol import codec, common_pb2, node_pb2
from runtime.protocol.codec import STREAM_END
from runtime.worker import results
from runtime.worker.actor import ActorRuntime
from runtime.worker.cancels import Cancels
from runtime.worker.output import flush_task_output

if TYPE_CHECKING:
    from runtime.api._client import CoreClient

#: Cancels remembered for ``RuntimeContext.is_canceled`` (the latest ones).
_CANCELS_KEPT = 1024

def _method(instance: Any, name: str) -> Any:
    """Method ``name`` of ``instance``, looked up on its class first: an instance attribute of
    the same name does not hide it (as in Ray)."""
    cls = type(instance)
    try:
        attr = inspect.getattr_static(cls, name)
    except AttributeError:
        return getattr(instance, name)  # made by __getattr__ or the like
    get = getattr(attr, "__get__", None)
    return get(instance, cls) if get is not None else attr


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


class Executor:
    """Runs the tasks the node gives this worker, one at a time or as its actor says."""

    def __init__(self, client: CoreClient, cancelled_early_max: int) -> None:
        self._client = client
        self._functions: dict[bytes, Any] = {}
        #: GPU indices reserved for each running task.
        self._gpu_ids: dict[bytes, list[int]] = {}
        self.cancels = Cancels(cancelled_early_max)
        #: Set when this worker becomes an actor.
        self.actor: ActorRuntime | None = None
        #: That actor's creation spec.
        self.actor_spec: common_pb2.TaskSpec | None = None
        #: Set when the actor called exit_actor(): it runs no more calls (the node ends it).
        self.exiting = False
        #: How many times this worker's actor was restarted before (its creation's attempt).
        self._restarts = 0
        #: Tasks whose cancel was asked here, the latest few (``is_cancelled``).
        self._cancel_asked: OrderedDict[bytes, None] = OrderedDict()

    # ---- entry points --------------------------------------------------------------

    def dispatch(self, ex: node_pb2.ExecuteTask) -> None:
        """Run a task the worker's main loop took: an actor call as the actor runs them."""
        if self.exiting:
            return  # the actor ended itself; the node fails what it had sent
        if self.actor is not None and ex.spec.actor_id and not ex.spec.actor_creation:
            self.actor.submit(ex)
        else:
            self.run_one(ex)

    def cancel(self, cancel: node_pb2.CancelTask) -> None:
        """The node asks to cancel a task here (called on the IO thread)."""
        asked = self._cancel_asked
        asked[cancel.task_id] = None
        if len(asked) > _CANCELS_KEPT:
            asked.popitem(last=False)
        if self.actor is not None and self.actor.cancel(cancel.task_id):
            return
        self.cancels.request(cancel.task_id)

    def is_cancelled(self, task_id: bytes) -> bool:
        """Whether a cancel of ``task_id`` was asked while it ran here."""
        return task_id in self._cancel_asked

    @property
    def actor_restarts(self) -> int:
        """How many times this worker's actor was restarted (0 when it is no actor)."""
        stack = self._client.task_stack
        if self.actor is None and stack and stack[-1].actor_creation:
            return stack[-1].attempt  # in the constructor
        return self._restarts

    def current_actor(self) -> tuple[common_pb2.TaskSpec, type] | None:
        """The creation spec and class of the actor running here (in its constructor too)."""
        stack = self._client.task_stack
        spec = stack[-1] if self.actor is None and stack and stack[-1].actor_creation else self.actor_spec
        cls = self._functions.get(spec.function_id) if spec is not None else None
        return (spec, cls) if spec is not None and isinstance(cls, type) else None

    def current_gpu_ids(self) -> list[int]:
        """GPU indices reserved for the task or actor running in the caller."""
        stack = self._client.task_stack
        if stack:
            ids = self._gpu_ids.get(stack[-1].task_id)
            # An actor's method calls carry no GPU ids of their own (run_one records [] for
            # them): the actor's, reserved at creation, apply.
            if ids:
                return list(ids)
        if self.actor is not None:
            return list(self.actor.gpu_ids)
        return []

    def running_task(self) -> bytes | None:
        """The id of the task on top of the calling thread's stack."""
        stack = self._client.task_stack
        return stack[-1].task_id if stack else None

    # ---- one task ------------------------------------------------------------------

    def run_one(self, ex: node_pb2.ExecuteTask) -> None:
        """Run the task in ``ex`` in this thread and send its TaskResult."""
        client = self._client
        cancels = self.cancels
        spec = ex.spec
        op = node_pb2.ClientOp()
        res = op.result
        res.task_id = spec.task_id
        token = client.push_task(spec)
        on_main = threading.current_thread() is threading.main_thread()
        not_cancelled = cancels.started(spec.task_id, on_main)
        ids = list(ex.gpu_ids)
        self._gpu_ids[spec.task_id] = ids
        # An actor keeps its GPUs for life; a task only while it runs.
        old_visible = _set_visible_gpus(ids) if ids else None
        value: Any = None
        try:
            try:
                if not not_cancelled:
                    raise results.cancelled(spec, "before it started")
                fn, args, kwargs = self._prepare(ex)
                value = fn(*args, **kwargs)
                self._finish(res, spec, value)
            except KeyboardInterrupt:
                if not cancels.was_requested(spec.task_id):
                    raise
                raise results.cancelled(spec) from None
        except ActorExit:
            self._actor_exit(res, spec)
        except Exception as e:  # noqa: BLE001 - whatever user code raises becomes the task's error
            results.failed(client, res, spec, e)
        finally:
            cancels.finished(spec.task_id, on_main)
            if not spec.actor_creation:
                self._gpu_ids.pop(spec.task_id, None)
                if ids:
                    _restore_visible_gpus(old_visible)
            flush_task_output()
            client.pop_task(token)
        client.send(op)
        # `value` is dropped only now, after the result (and its nested refs) is queued.
        del value
        if on_main and cancels.below_was_cancelled():
            # This task ran nested on top of a task that was cancelled meanwhile (the SIGINT
            # then found this one on top and was ignored): interrupt that task now.
            raise KeyboardInterrupt

    async def run_one_async(self, ex: node_pb2.ExecuteTask) -> None:
        """Run an async actor method on the actor's event loop and send its TaskResult."""
        client = self._client
        spec = ex.spec
        op = node_pb2.ClientOp()
        res = op.result
        res.task_id = spec.task_id
        token = client.push_task(spec)
        value: Any = None
        try:
            fn, args, kwargs = self._prepare(ex)
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            if spec.streaming and inspect.isasyncgen(value):
                await self._stream_async(spec, value)
            else:
                self._finish(res, spec, value)
        except asyncio.CancelledError:
            results.failed(client, res, spec, results.cancelled(spec))
        except ActorExit:
            self._actor_exit(res, spec)
        except Exception as e:  # noqa: BLE001 - whatever user code raises becomes the task's error
            results.failed(client, res, spec, e)
        finally:
            client.pop_task(token)
        client.send(op)
        del value

    # ---- streaming (generator) tasks ----------------------------------------------

    def _stream(self, spec: common_pb2.TaskSpec, items: Any) -> None:
        """Send each item of a streaming task as it is produced, then the end marker. An
        exception of the generator is the item where it happened; a cancel too, then it
        goes on up (the task ends cancelled)."""
        if inspect.isasyncgen(items):  # on the actor's loop, or a loop of its own
            loop = self.actor.loop if self.actor is not None else None
            run = self._stream_async(spec, items)
            if loop is not None:
                asyncio.run_coroutine_threadsafe(run, loop).result()
            else:
                asyncio.run(run)
            return
        i = 0
        try:
            if not hasattr(items, "__iter__"):
                raise TypeError(f"{spec.name}() returned {type(items).__name__}, not a generator, "
                                "but was called as one (num_returns='streaming').")
            for item in items:
                i += 1
                self._send_item(spec, i, item)
        except Exception as e:  # noqa: BLE001 - the generator's error is its item's value
            i += 1
            self._send_item(spec, i, None, results.error_blob(self._client, spec, e))
        except KeyboardInterrupt:
            if self.cancels.was_requested(spec.task_id):
                err = codec.serialize(results.cancelled(spec), error=True).to_bytes()
                self._send_item(spec, i + 1, None, err)
                self._send_item(spec, i + 2, None, STREAM_END)
            raise
        self._send_item(spec, i + 1, None, STREAM_END)

    async def _stream_async(self, spec: common_pb2.TaskSpec, items: Any) -> None:
        """``_stream`` for an async generator (an async actor's method)."""
        i = 0
        try:
            async for item in items:
                i += 1
                self._send_item(spec, i, item)
        except Exception as e:  # noqa: BLE001 - the generator's error is its item's value
            i += 1
            self._send_item(spec, i, None, results.error_blob(self._client, spec, e))
        self._send_item(spec, i + 1, None, STREAM_END)

    def _send_item(self, spec: common_pb2.TaskSpec, index: int, value: Any, blob: bytes = b"") -> None:
        """Item ``index`` of a streaming task: ``value``, or ``blob`` (an error, the end)."""
        client = self._client
        op = node_pb2.ClientOp()
        res = op.result
        res.task_id, res.stream_index = spec.task_id, index
        data = res.returns.add()
        oid = _ids.object_id(spec.task_id, index)
        if not blob:
            try:
                results.encode_return(client, data, oid, value, spec)
            except Exception as e:  # noqa: BLE001 - an item that cannot be stored is its error
                data.Clear()
                blob = results.error_blob(client, spec, e)
        if blob:
            data.object_id, data.inline, data.size = oid, blob, len(blob)
        client.send(op)

    def _actor_exit(self, res: node_pb2.TaskResult, spec: common_pb2.TaskSpec) -> None:
        """``spec``'s method called exit_actor(): it fails with ActorDiedError, and the node,
        told by ``actor_exit``, ends the actor without a restart."""
        self.exiting = True
        name = spec.name.split(".", 1)[0]
        err = ActorDiedError(f"The actor {name} (id {_ids.short(spec.actor_id)}) exited: "
                             f"{spec.name}() called exit_actor(). It is not restarted.",
                             actor_id=spec.actor_id.hex())
        blob = codec.serialize(err, error=True).to_bytes()
        results.fail(self._client, res, spec, blob, str(err), False)
        res.actor_exit = True

    # ---- steps ---------------------------------------------------------------------

    def load_function(self, function_id: bytes, name: str) -> Any:
        """The function (or class) ``function_id``, from the GCS the first time."""
        fn = self._functions.get(function_id)
        if fn is not None:
            return fn
        client = self._client
        assert client.gcs is not None
        row = client.run(client.gcs.get_function(function_id), client.settings.function_timeout_s)
        if row is None:
            raise FunctionNotFoundError(
                f"function {name} ({function_id.hex()[:12]}) is not in the GCS, so worker pid "
                f"{os.getpid()} cannot run it: its driver's export was lost (the GCS restarted "
                f"without it?). Submit the task again from a connected driver.",
                function_id=function_id.hex(), function_name=name)
        try:
            fn = cloudpickle.loads(row.pickled)
        except Exception as e:
            e.add_note(f"cellray: could not load {name}() on this worker (pid {os.getpid()}): the "
                       "worker's Python environment lacks something the function needs. Install "
                       "it on every node.")
            raise
        self._functions[function_id] = fn
        return fn

    def _prepare(self, ex: node_pb2.ExecuteTask) -> tuple[Any, list[Any], dict[str, Any]]:
        spec = ex.spec
        if spec.actor_id and not spec.actor_creation:
            assert self.actor is not None, "an actor call reached a worker that is not an actor"
            fn = _method(self.actor.instance, spec.method)
        else:
            fn = self.load_function(spec.function_id, spec.name)
        args, kwargs = _args.decode(spec.args, [results.arg_value(d) for d in ex.args])
        results.note_mapped(self._client, ex.args)
        return fn, args, kwargs

    def _finish(self, res: node_pb2.TaskResult, spec: common_pb2.TaskSpec, value: Any) -> None:
        if spec.actor_creation:
            self._become_actor(spec, value)
            return
        if spec.streaming:
            self._stream(spec, value)
            return
        client = self._client
        for i, v in enumerate(results.returns(value, spec), 1):
            results.encode_return(client, res.returns.add(), _ids.object_id(spec.task_id, i), v, spec)

    def _become_actor(self, spec: common_pb2.TaskSpec, instance: Any) -> None:
        self._restarts = spec.attempt
        self.actor_spec = spec
        self._client.namespace = spec.namespace  # its calls run in its creator's job's
        self.actor = ActorRuntime.create(spec, instance, self._gpu_ids.pop(spec.task_id, []),
                                         self.run_one, self.run_one_async)
