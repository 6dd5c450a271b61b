"""``ObjectRefGenerator``: what ``.remote()`` of a generator task or actor method returns,
as Ray's. Its items are ObjectRefs, yielded as the task produces them.

The task's items are its returns 1, 2, 3... in order; after the last one the worker stores
an end marker as the next return. An exception raised by the generator becomes the value
of the item where it happened (``get`` of that ref raises it), and the stream ends after
it. Each item is held for this client until its ref is dropped, so the memory of items
already consumed and dropped is freed while the task runs on.

``completed()`` is a ref that becomes ready when the task ended. The end's index is not
known in advance, so a watcher thread walks the items the consumer has not taken yet and
holds a ref to each (``_ahead``) until the consumer takes it, so that none is freed in
between; the consumer's ``next`` and the watcher both record what they saw under one lock.
At the end marker the watcher stores the completion object, this client's own as a ``put``
value is: None, or the error of the item before the marker when the task failed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

from runtime import _ids
from runtime.api._object_ref import ObjectRef
from runtime.exceptions import ClusterError, GetTimeoutError
from runtime.protocol import codec, common_pb2, node_pb2

if TYPE_CHECKING:
    from runtime.api._client import CoreClient

logger = logging.getLogger(__name__)

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
        #: Guards what the consumer and the completion watcher share (below).
        self._lock = threading.Lock()
        #: The watcher's refs to items not taken yet, by index: they keep the items alive.
        self._ahead: dict[int, ObjectRef] = {}
        #: The highest item index whose value was seen, and its error blob (None: a value).
        self._seen = 0
        self._seen_error: bytes | None = None
        #: The end marker's index, once seen.
        self._end: int | None = None
        #: ``completed()``'s ref, made on its first call.
        self._completed: ObjectRef | None = None

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

    def waitable(self) -> ObjectRef:
        """A ref that is ready when ``next`` would not block (its next item, or the end of
        the stream, is there): what ``wait`` waits on for a generator."""
        with self._lock:
            ref = self._ahead.get(self._next)
            if ref is None:  # kept until ``next`` takes the item over (see ``_take``)
                ref = self._ahead[self._next] = ObjectRef(_ids.object_id(self._task_id, self._next))
            return ref

    def is_finished(self) -> bool:
        """True once every item was taken (the end of the stream was reached)."""
        return self._done

    def task_id(self) -> str:
        """Hex id of the generator task."""
        return self._task_id.hex()

    def completed(self) -> ObjectRef:
        """A ref that becomes ready when the generator task ended, as Ray's ``completed()``.

        ``get`` of it returns None once the task finished, and raises the task's error when
        it failed (an exception of the generator, a cancel, a worker that died). Items not
        taken yet stay available to ``next``. Every call returns the same ref.

        Examples
        --------
        >>> gen = count.remote(3)                         # doctest: +SKIP
        >>> rt.get(gen.completed())                       # doctest: +SKIP
        >>> [rt.get(ref) for ref in gen]                  # doctest: +SKIP
        [0, 1, 2]
        """
        with self._lock:
            if self._completed is not None:
                return self._completed
            oid = _ids.object_id(_ids.new_id(), 0)
            # Stored by the watcher, here first: a wait for it must not ask the node, which
            # does not know it yet.
            self._client.objects.expect([oid])
            ref = self._completed = ObjectRef(oid)
        threading.Thread(target=self._watch, args=(oid,), daemon=True,
                         name=f"cellray-generator-{self._task_id.hex()[:8]}").start()
        return ref

    def _saw(self, index: int, data: common_pb2.ObjectData | None) -> bool:
        """Record what item ``index`` holds (under ``_lock``); True when it is the end marker."""
        blob = data.inline if data is not None else b""
        if blob == STREAM_END:
            self._end = index
            return True
        if index > self._seen:
            self._seen = index
            self._seen_error = blob if blob and codec.is_error(blob) else None
        return False

    def _watch(self, oid: bytes) -> None:
        """The watcher thread of ``completed()``: walk to the end marker, then store the result."""
        client = self._client
        index = 0
        try:
            while True:
                with self._lock:
                    if self._end is not None:
                        break
                    # Items below ``_next`` were taken (and seen) by the consumer.
                    index = max(index + 1, self._next)
                    ref = self._ahead.get(index)
                    if ref is None:
                        ref = self._ahead[index] = ObjectRef(_ids.object_id(self._task_id, index))
                client.wait_ids([ref._id], 1, None)
                with self._lock:
                    if self._saw(index, client.objects.data(ref._id)):
                        break  # ``_ahead`` keeps the marker too: ``next`` ends on it
                del ref  # ``_ahead`` keeps it for the consumer, unless taken meanwhile
            with self._lock:
                failure = self._seen_error
        except ClusterError as e:  # the connection closed or broke: nobody waits any more
            logger.debug("stopped watching generator task %s: %s", self._task_id.hex(), e)
            return
        blob = failure if failure is not None else codec.serialize(None).to_bytes()
        data = common_pb2.ObjectData(object_id=oid, inline=blob, size=len(blob),
                                     node_id=client.node_id)
        op = node_pb2.ClientOp()
        op.put.CopyFrom(data)
        client.objects.stored(data)
        try:
            client.send(op)  # the node holds it too, so that other tasks can read it
        except ClusterError as e:
            logger.debug("could not store the completion of generator task %s: %s",
                         self._task_id.hex(), e)
        client.objects.wake()

    def _take(self, timeout: float | None) -> ObjectRef:
        if self._done:
            raise StopIteration
        oid = _ids.object_id(self._task_id, self._next)
        ref = ObjectRef(oid)  # the node holds each item for this client; this ref takes over
        client = self._client
        if not client.wait_ids([oid], 1, timeout):
            raise GetTimeoutError(f"The generator's item {self._next} was not produced within "
                                  f"{timeout} s.")
        with self._lock:
            end = self._saw(self._next, client.objects.data(oid))
            self._ahead.pop(self._next, None)  # ``ref`` holds it now
            if end:
                self._done = True
                raise StopIteration
            self._next += 1
        return ref

    def __repr__(self) -> str:
        return f"ObjectRefGenerator(task {self._task_id.hex()[:12]}, next item {self._next})"

    def __reduce__(self) -> Any:
        raise TypeError("An ObjectRefGenerator cannot be sent to other tasks: iterate it here, "
                        "and pass the item refs (or their values) on.")
