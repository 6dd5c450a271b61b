"""``ObjectRefGenerator``: what ``.remote()`` of a generator task or actor method returns,
as Ray's. Its items are ObjectRefs, yielded as the task produces them.

The task's items are its returns 1, 2, 3... in order; after the last one the worker stores
an end marker as the next return. An exception raised by the generator becomes the value
of the item where it happened (``get`` of that ref raises it), and the stream ends after
it. Each item is held for this client until its ref is dropped, so the memory of items
already consumed and dropped is freed while the task runs on.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from runtime import _ids
from runtime.api._object_ref import ObjectRef
from runtime.exceptions import GetTimeoutError
from runtime.protocol import codec

if TYPE_CHECKING:
    from runtime.api._client import CoreClient

STREAM_END = codec.STREAM_END


class ObjectRefGenerator:
    """The refs of a generator task's items, in order (``for ref in gen``, ``async for``).

    ``next(gen)`` blocks until the next item exists and returns its ObjectRef; it raises
    ``StopIteration`` after the last one. Items can be read while the task still runs.

    Examples
    --------
    >>> import runtime as rt
    >>> @rt.remote
    ... def count(n):
    ...     for i in range(n):
    ...         yield i
    >>> [rt.get(ref) for ref in count.remote(3)]          # doctest: +SKIP
    [0, 1, 2]
    """

    def __init__(self, client: CoreClient, task_id: bytes) -> None:
        self._client = client
        self._task_id = task_id
        self._next = 1
        self._done = False

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        return self._take(None)

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        ref = await asyncio.to_thread(self._take_or_none)  # StopIteration cannot cross a future
        if ref is None:
            raise StopAsyncIteration
        return ref

    def _take_or_none(self) -> ObjectRef | None:
        try:
            return self._take(None)
        except StopIteration:
            return None

    def next_ready(self, timeout: float | None = None) -> ObjectRef:
        """The next item's ref, waiting at most ``timeout`` seconds (``GetTimeoutError``)."""
        return self._take(timeout)

    def is_finished(self) -> bool:
        """True once every item was taken (the end of the stream was reached)."""
        return self._done

    def task_id(self) -> str:
        """Hex id of the generator task."""
        return self._task_id.hex()

    def _take(self, timeout: float | None) -> ObjectRef:
        if self._done:
            raise StopIteration
        oid = _ids.object_id(self._task_id, self._next)
        ref = ObjectRef(oid)  # the node holds each item for this client; this ref takes over
        client = self._client
        if not client.wait_ids([oid], 1, timeout):
            raise GetTimeoutError(f"The generator's item {self._next} was not produced within "
                                  f"{timeout} s.")
        data = client.objects.data(oid)
        if data is not None and data.inline == STREAM_END:
            self._done = True
            raise StopIteration
        self._next += 1
        return ref

    def __repr__(self) -> str:
        return f"ObjectRefGenerator(task {self._task_id.hex()[:12]}, next item {self._next})"

    def __reduce__(self) -> Any:
        raise TypeError("An ObjectRefGenerator cannot be sent to other tasks: iterate it here, "
                        "and pass the item refs (or their values) on.")
