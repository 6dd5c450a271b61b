"""Subscriptions of ``runtime.state``: ``subscribe``, the ``Subscription`` it returns, ``Change``.

Part of the ``runtime.state`` package: import these names from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime.api import _context
from runtime.exceptions import ClientClosedError
from runtime.protocol import gcs_pb2
from runtime.state._rows import TABLES, Row, decode_row

if TYPE_CHECKING:
    from runtime.api._client import CoreClient

#: The package's name, as before the split, so that log filters on "runtime.state" still match.
logger = logging.getLogger("runtime.state")


@dataclass(frozen=True)
class Change:
    """One message of a subscription: a row written or deleted, or a marker.

    Attributes
    ----------
    table : str
        The row's table, or "" for a marker.
    key : str
        Hex key of the row (the id of its node, task, object, job or actor; for "events", a
        sequence number); "" for a marker.
    value : Row | None
        The row after the change, as a dataclass; None when the row was deleted, and for
        markers.
    snapshot : bool
        True for rows of the snapshot that starts every subscription (they are the state
        as it was, not changes).
    snapshot_done : bool
        The marker after the snapshot: what follows are changes, as they happen.
    reset : bool
        The marker sent before a fresh snapshot when the subscription had to start over
        (it fell behind, or the GCS connection broke): forget every row you know.
    """

    table: str
    key: str
    value: Row | None
    snapshot: bool = False
    snapshot_done: bool = False
    reset: bool = False

    @property
    def deleted(self) -> bool:
        """True when this change deletes the row ``key`` of ``table``."""
        return bool(self.table) and self.value is None


def _change_of(msg: gcs_pb2.PubMessage) -> Change:
    if msg.snapshot_done:
        return Change("", "", None, snapshot_done=True)
    value = None if msg.deleted else decode_row(msg.table, msg.value)
    return Change(msg.table, msg.key.hex(), value, snapshot=msg.snapshot)


#: Resubscription backoff: first delay, longest delay (seconds; jittered).
_RETRY_MIN_S, _RETRY_MAX_S = 0.1, 5.0
#: How often the delivery thread checks, while idle, whether the connection was shut down.
_IDLE_CHECK_S = 0.5


class Subscription:
    """A live subscription returned by ``subscribe``; ``close()`` ends it.

    A task on the connection's IO loop reads the GCS stream and queues each ``Change``;
    the subscription's own thread calls the callback with them, in order, one at a time.
    When ``max_pending`` changes wait, the task stops reading until the callback catches
    up (the GCS buffers meanwhile, and disconnects a subscriber that falls too far behind:
    then the subscription starts over). ``runtime.shutdown()`` ends every subscription of
    the connection. Also a context manager: ``with subscribe(...) as sub:`` closes on exit.

    Attributes
    ----------
    tables : tuple[str, ...]
        The tables subscribed to.
    restarts : int
        How many times the subscription started over with a fresh snapshot.
    """

    def __init__(self, client: CoreClient, tables: tuple[str, ...], callback: Callable[[Change], object],
                 max_pending: int) -> None:
        self.tables = tables
        self.restarts = 0
        self._client = client
        self._callback = callback
        self._max_pending = max_pending
        #: What the reader passes to the delivery thread: GCS messages (decoded there, off
        #: the IO loop), reset markers, and None to stop.
        self._queue: queue.SimpleQueue[gcs_pb2.PubMessage | Change | None] = queue.SimpleQueue()
        self._task: asyncio.Task[None] | None = None
        #: Set (on the IO loop) when the delivery thread made room in a full queue.
        self._room: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._want_room = False
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._deliver, daemon=True,
                                        name=f"cellray-subscription-{'-'.join(tables)}")

    def _start(self) -> None:
        async def spawn() -> asyncio.Task[None]:
            return asyncio.get_running_loop().create_task(self._pump(), name=self._thread.name)

        self._thread.start()
        try:
            self._task = self._client.run(spawn(), 10.0)
        except BaseException:
            self._queue.put(None)
            self._thread.join()
            raise

    @property
    def active(self) -> bool:
        """True until the subscription ended (closed, or its connection shut down)."""
        return self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """End the subscription; return once no callback runs and none will.

        Safe to call twice, after ``runtime.shutdown()``, and from the callback itself (then
        it returns at once and no further change is delivered).
        """
        with self._lock:
            first, self._closing = not self._closing, True
        task, client = self._task, self._client
        if first and task is not None and not task.done():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is task.get_loop():  # called on the IO thread (from a handler)
                task.cancel()
            elif not client.closed:
                async def stop() -> None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

                try:
                    client.run(stop(), timeout)
                except Exception as e:  # noqa: BLE001 - the connection went down meanwhile: nothing to stop
                    logger.debug("stopping %r: %s", self, e)
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "active" if self.active else "closed"
        return f"<Subscription to {', '.join(self.tables)} ({state}, {self.restarts} restarts)>"

    # ---- on the IO loop ----

    async def _pump(self) -> None:
        """Read the GCS stream into the queue; start over when it breaks."""
        gcs = self._client.gcs
        assert gcs is not None
        self._room, self._loop = asyncio.Event(), asyncio.get_running_loop()
        delay = _RETRY_MIN_S
        try:
            while True:
                try:
                    async with contextlib.aclosing(gcs.subscribe(self.tables)) as stream:
                        async for msg in stream:
                            if msg.snapshot_done:
                                delay = _RETRY_MIN_S  # a full snapshot came through: healthy again
                            await self._offer(msg)
                    why = "the GCS ended the stream"
                except ClientClosedError:
                    return  # the connection was shut down
                except Exception as e:  # noqa: BLE001 - any break (ConnectionLostError, ...) restarts
                    if self._client.closed:
                        return
                    if getattr(e, "cluster_restarted", False):
                        logger.error("subscription to %s ends: %s", ", ".join(self.tables), e)
                        return  # its cluster is gone: no snapshot of another one
                    why = str(e)
                if self._client.closed:
                    return
                # Once per outage (the next subscription waits for the GCS to come back).
                log = logger.warning if delay == _RETRY_MIN_S else logger.info
                log("subscription to %s starts over in %.1f s with a fresh snapshot: %s",
                    ", ".join(self.tables), delay, why)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, _RETRY_MAX_S)
                self.restarts += 1
                self._queue.put(Change("", "", None, reset=True))
        finally:
            self._queue.put(None)

    async def _offer(self, msg: gcs_pb2.PubMessage) -> None:
        room = self._room
        assert room is not None
        while self._queue.qsize() >= self._max_pending:
            room.clear()
            self._want_room = True
            if self._queue.qsize() < self._max_pending:  # the callback caught up meanwhile
                break
            await room.wait()
        self._queue.put(msg)

    # ---- on the delivery thread ----

    def _deliver(self) -> None:
        get, callback = self._queue.get, self._callback
        while True:
            try:
                item = get(timeout=_IDLE_CHECK_S)
            except queue.Empty:
                if self._client.closed:  # shut down under us, before the reader could say so
                    return
                continue
            if self._want_room:
                self._want_room = False
                self._make_room()
            if item is None or self._closing:
                return
            try:
                change = item if isinstance(item, Change) else _change_of(item)
            except Exception:  # a row this version cannot read: skip it, keep the rest
                logger.exception("subscription to %s could not decode a row of %r",
                                 ", ".join(self.tables), getattr(item, "table", "?"))
                continue
            try:
                callback(change)
            except Exception:  # a user's callback must not end the subscription
                logger.exception("subscription callback %r failed on a change of %r (key %s); "
                                 "the subscription goes on", callback, change.table, change.key)

    def _make_room(self) -> None:
        loop, room = self._loop, self._room
        if loop is not None and room is not None:
            with contextlib.suppress(RuntimeError):  # the loop was closed under us
                loop.call_soon_threadsafe(room.set)


def subscribe(tables: Sequence[str], callback: Callable[[Change], object], *,
              max_pending: int = 10_000) -> Subscription:
    """Call ``callback`` with every row of ``tables``, then with every change, until closed.

    The callback first receives each row of the tables as they are (``snapshot=True``),
    then one marker ``Change(table="", snapshot_done=True)``, then each change as the GCS
    applies it (a deleted row has ``value=None``). It runs on the subscription's own
    thread, one change at a time in order, so it may block briefly and may call the other
    functions of this module. An exception it raises is logged and the subscription goes on.

    When the callback is slower than the changes come, up to ``max_pending`` of them wait
    for it, then the GCS holds more (10 000 by default); a subscriber that falls further
    behind is disconnected by the GCS. Then, and whenever the GCS connection breaks, the
    subscription starts over by itself: the callback receives a
    ``Change(table="", reset=True)`` marker, then a fresh snapshot (through a GCS outage,
    once the GCS is back). A GCS that came back as another cluster (restarted without
    persistent storage) ends the subscription, with an error in the log.

    Parameters
    ----------
    tables : sequence of str
        Any of "nodes", "jobs", "tasks", "objects", "actors", "events".
    callback : callable
        Called with each ``Change``.
    max_pending : int
        Changes that may wait for the callback in this process.

    Returns
    -------
    Subscription
        Call ``close()`` to stop (or use it in a ``with`` block).

    Raises
    ------
    ValueError
        For an unknown table or an empty list.
    RuntimeError
        When ``runtime.init()`` was not called.

    Examples
    --------
    >>> def show(change):
    ...     if change.table == "tasks" and change.value is not None:
    ...         print(change.value.name, change.value.state)
    >>> sub = subscribe(["tasks"], show)          # doctest: +SKIP
    >>> sub.close()                               # doctest: +SKIP
    """
    if isinstance(tables, str):
        tables = [tables]
    names = tuple(dict.fromkeys(tables))
    unknown = [t for t in names if t not in TABLES]
    if unknown or not names:
        raise ValueError(f"subscribe() takes one or more of the tables {', '.join(TABLES)}; "
                         f"got {list(tables)!r}")
    if not callable(callback):
        raise TypeError(f"subscribe() needs a callable callback, got {type(callback).__name__}")
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
        raise ValueError(f"max_pending must be a positive int, got {max_pending!r}")
    client = _context.current()
    if client.gcs is None or client.closed:
        raise ClientClosedError("This cluster connection was shut down. Call runtime.init() again.")
    sub = Subscription(client, names, callback, max_pending)
    sub._start()
    return sub
