"""``Queue``: a first-in first-out queue shared by the driver, tasks and actors, as Ray's
``ray.util.queue.Queue``.

The items live in an actor (an async one: a blocked ``get`` does not hold back ``put``);
a ``Queue`` object is only a handle to it, so it can be passed to tasks and actors, which
then put and get on the same queue. ``Empty`` and ``Full`` are raised as the standard
library's ``queue`` raises them, and are subclasses of its ``queue.Empty``/``queue.Full``.

Examples
--------
>>> import runtime as rt
>>> from runtime.util.queue import Queue, Empty
>>> q = Queue(maxsize=100)                                     # doctest: +SKIP
>>> @rt.remote
... def produce(q, n):
...     for i in range(n):
...         q.put(i)
>>> rt.get(produce.remote(q, 3))                              # doctest: +SKIP
>>> [q.get(timeout=10) for _ in range(3)]                     # doctest: +SKIP
[0, 1, 2]
>>> q.get_nowait()                                            # doctest: +SKIP
Traceback (most recent call last):
...
runtime.util.queue.Empty: The queue is empty.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any

import runtime as rt

__all__ = ["Empty", "Full", "Queue"]


class Empty(_stdlib_queue.Empty):
    """Raised by ``get`` when no item comes (non-blocking, or after ``timeout``)."""


class Full(_stdlib_queue.Full):
    """Raised by ``put`` when there is no room (non-blocking, or after ``timeout``)."""


class _QueueActor:
    """Holds the items. Answers ``(ok, value)`` rather than raising, so callers raise the
    plain ``Empty``/``Full`` and not a remote-task error around them."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.items.qsize()

    async def put(self, item: Any, block: bool, timeout: float | None) -> bool:
        try:
            if block:
                await asyncio.wait_for(self.items.put(item), timeout)
            else:
                self.items.put_nowait(item)
        except (TimeoutError, asyncio.QueueFull):
            return False
        return True

    async def get(self, block: bool, timeout: float | None) -> tuple[bool, Any]:
        try:
            if block:
                return True, await asyncio.wait_for(self.items.get(), timeout)
            return True, self.items.get_nowait()
        except (TimeoutError, asyncio.QueueEmpty):
            return False, None

    def put_nowait_batch(self, items: list[Any]) -> bool:
        if self.maxsize > 0 and self.items.qsize() + len(items) > self.maxsize:
            return False
        for item in items:
            self.items.put_nowait(item)
        return True

    def get_nowait_batch(self, n: int) -> tuple[bool, list[Any]]:
        if n > self.items.qsize():
            return False, []
        return True, [self.items.get_nowait() for _ in range(n)]


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or a non-negative number of seconds, got {timeout!r}")


class Queue:
    """A FIFO queue usable from the driver, tasks and actors (see the module docstring).

    Parameters
    ----------
    maxsize
        The most items it holds; ``put`` blocks (or raises ``Full``) beyond. 0: no limit.
    actor_options
        Options for the actor that holds the items (e.g. ``{"num_cpus": 0}``, a name).
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be 0 (no limit) or more, got {maxsize!r}")
        self.maxsize = maxsize
        options = {"num_cpus": 0, **(actor_options or {})}
        #: The actor holding the items (None after ``shutdown``).
        self.actor: Any = rt.remote(_QueueActor).options(**options).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue now."""
        return int(rt.get(self.actor.qsize.remote()))

    qsize = size

    def empty(self) -> bool:
        """True when the queue holds no item now."""
        return self.size() == 0

    def full(self) -> bool:
        """True when the queue is at ``maxsize`` now (never, without a limit)."""
        return self.maxsize > 0 and self.size() >= self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; with ``block``, wait for room (at most ``timeout`` s), else raise
        ``Full`` at once when there is none."""
        _check_timeout(timeout)
        if not rt.get(self.actor.put.remote(item, block, timeout)):
            raise Full("The queue is full." if not block else f"The queue stayed full for {timeout} s.")

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for ``async`` code (an async actor, a notebook's event loop)."""
        _check_timeout(timeout)
        if not await self.actor.put.remote(item, block, timeout):
            raise Full("The queue is full." if not block else f"The queue stayed full for {timeout} s.")

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item; with ``block``, wait for one (at most
        ``timeout`` s), else raise ``Empty`` at once when there is none."""
        _check_timeout(timeout)
        ok, item = rt.get(self.actor.get.remote(block, timeout))
        if not ok:
            raise Empty("The queue is empty." if not block else f"The queue stayed empty for {timeout} s.")
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for ``async`` code."""
        _check_timeout(timeout)
        ok, item = await self.actor.get.remote(block, timeout)
        if not ok:
            raise Empty("The queue is empty." if not block else f"The queue stayed empty for {timeout} s.")
        return item

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all of ``items`` at once, or none (raising ``Full``) when they do not fit."""
        batch = list(items)
        if not rt.get(self.actor.put_nowait_batch.remote(batch)):
            raise Full(f"{len(batch)} items do not fit: the queue holds at most {self.maxsize}.")

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return the ``num_items`` oldest items, or none (raising ``Empty``)
        when there are fewer."""
        if num_items < 0:
            raise ValueError(f"num_items must be 0 or more, got {num_items!r}")
        ok, items = rt.get(self.actor.get_nowait_batch.remote(num_items))
        if not ok:
            raise Empty(f"The queue holds fewer than {num_items} items.")
        return list(items)

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """Stop the actor holding the items; the queue cannot be used after.

        ``force`` and ``grace_period_s`` are accepted for Ray's signature; the actor is
        killed at once either way (it runs no user code to let finish).
        """
        if self.actor is not None:
            rt.kill(self.actor)
            self.actor = None
