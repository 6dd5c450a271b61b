"""A worker that became an actor's process: its instance and how its calls run.

Calls run in order on the main thread (the default), on a thread pool
(``max_concurrency`` > 1), or on an event loop of their own (an actor with an ``async``
method). How one call runs is the executor's, handed in as two callables.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runtime.protocol import common_pb2, node_pb2
from runtime.worker.output import flush_task_output

RunSync = Callable[[node_pb2.ExecuteTask], None]
RunAsync = Callable[[node_pb2.ExecuteTask], Coroutine[Any, Any, None]]

#: Concurrent calls of an async actor unless ``max_concurrency`` says otherwise (Ray's).
_ASYNC_DEFAULT_CONCURRENCY = 1000


class ActorRuntime:
    """This worker's actor: its instance and how its calls run (in order, threads, or a loop)."""

    def __init__(self, instance: Any, max_concurrency: int, is_async: bool, gpu_ids: list[int],
                 run: RunSync, run_async: RunAsync) -> None:
        self.instance = instance
        self.is_async = is_async
        #: GPU indices reserved at creation, for the actor's life.
        self.gpu_ids = gpu_ids
        self._run = run
        self._run_async = run_async
        self.pool: ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sem: asyncio.Semaphore | None = None
        self.async_tasks: dict[bytes, asyncio.Task[None]] = {}
        self.limit = max_concurrency
        if is_async:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="actor-loop", daemon=True).start()
        elif max_concurrency > 1:
            self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="actor")

    @classmethod
    def create(cls, spec: common_pb2.TaskSpec, instance: Any, gpu_ids: list[int], run: RunSync,
               run_async: RunAsync) -> ActorRuntime:
        """The runtime for ``instance``, built by the actor creation task ``spec``."""
        options = json.loads(spec.actor_options or b"{}")
        kind = type(instance)
        is_async = any(inspect.iscoroutinefunction(getattr(kind, n, None))
                       for n in dir(kind) if not n.startswith("__"))
        default = _ASYNC_DEFAULT_CONCURRENCY if is_async else 1
        return cls(instance, int(options.get("max_concurrency") or default), is_async, gpu_ids,
                   run, run_async)

    def submit(self, ex: node_pb2.ExecuteTask) -> None:
        """Run one call: here (in order), on the pool, or on the loop."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._start_async, ex)
        elif self.pool is not None:
            self.pool.submit(self._run_pooled, ex)
        else:
            self._run(ex)

    def _start_async(self, ex: node_pb2.ExecuteTask) -> None:
        if self.sem is None:
            self.sem = asyncio.Semaphore(self.limit)
        sem = self.sem
        task_id = ex.spec.task_id
        run_async = self._run_async

        async def limited() -> None:
            async with sem:
                try:
                    await run_async(ex)
                except (SystemExit, KeyboardInterrupt) as e:
                    # Escaping here would stop the loop, and every later call would hang.
                    end_process(e)

        assert self.loop is not None
        t = self.loop.create_task(limited())
        self.async_tasks[task_id] = t
        t.add_done_callback(lambda _: self.async_tasks.pop(task_id, None))

    def _run_pooled(self, ex: node_pb2.ExecuteTask) -> None:
        """One call on a thread of a threaded actor's pool."""
        try:
            self._run(ex)
        except (SystemExit, KeyboardInterrupt) as e:
            # The pool's future would swallow it: no result, and the caller waits forever.
            end_process(e)

    def cancel(self, task_id: bytes) -> bool:
        """Cancel a call running on the loop; False when none such runs here."""
        t = self.async_tasks.get(task_id)
        if t is None or self.loop is None:
            return False
        self.loop.call_soon_threadsafe(t.cancel)
        return True


def end_process(exc: BaseException) -> None:
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
    flush_task_output()
    os._exit(code)
