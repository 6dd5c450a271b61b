"""``Lane``: a queue of outgoing work drained by at most ``width`` coroutines, in batches.

A burst of thousands of messages (spills, result reports) must not become thousands of
coroutines on the node's event loop: each would be scheduled at least once, and a burst
of them would push the node's own heartbeat back by seconds. A lane keeps the items in a
deque and starts a worker only while fewer than ``width`` run; each worker hands up to
``batch`` items at a time to the handler, and ends when the deque is empty.

Examples
--------
>>> import asyncio
>>> async def main() -> list[list[int]]:
...     seen: list[list[int]] = []
...     async def handle(items: list[int]) -> None:
...         seen.append(items)
...     lane = Lane(handle, width=1, batch=2)
...     for i in range(5):
...         lane.put(i)
...     await lane.drained()
...     return seen
>>> asyncio.run(main())
[[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["Lane"]

T = TypeVar("T")


class Lane(Generic[T]):
    """Items handed to ``handler`` in batches of at most ``batch``, by at most ``width``
    workers at once (see the module docstring). The handler must not raise; if it does,
    the error is logged and the worker goes on with the next batch."""

    def __init__(self, handler: Callable[[list[T]], Awaitable[None]], *, width: int, batch: int = 1) -> None:
        if width < 1 or batch < 1:
            raise ValueError(f"a Lane needs width >= 1 and batch >= 1, got {width} and {batch}")
        self._handler = handler
        self._width = width
        self._batch = batch
        self._items: deque[T] = deque()
        self._workers: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Items waiting (not yet handed to the handler)."""
        return len(self._items)

    @property
    def busy(self) -> bool:
        """True while items wait or a worker runs."""
        return bool(self._items or self._workers)

    def put(self, item: T) -> None:
        """Queue ``item``; a worker starts when fewer than ``width`` run."""
        self._items.append(item)
        if len(self._workers) < self._width:
            worker = asyncio.get_running_loop().create_task(self._work())
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    async def _work(self) -> None:
        items, batch = self._items, self._batch
        while items:
            taken = [items.popleft() for _ in range(min(batch, len(items)))]
            try:
                await self._handler(taken)
            except asyncio.CancelledError:
                raise
            except Exception:  # a lane outlives any one batch's failure
                logger.exception("a batch of %d item(s) failed", len(taken))

    async def drained(self) -> None:
        """Wait until every item queued so far was handled (for tests and shutdown)."""
        while self._workers:
            await asyncio.gather(*list(self._workers), return_exceptions=True)

    def cancel(self) -> None:
        """Stop the workers; items still queued are dropped."""
        for worker in list(self._workers):
            worker.cancel()
        self._items.clear()
