"""The objects a client knows: their data, the ones asked for, and local ref counts.

Results of tasks this client submitted are pushed to it by the node (it owns them);
other objects are asked for with a ``get`` op. ``ObjectRef`` instances count themselves
here: the first local ref to an object this client did not create is announced to the
node, and so is the last one dropped (through the ``Outbox``, in order with other ops).

One condition variable guards the table; waiters sleep on it and the session's reader
wakes them after each batch. Lock order: this table's lock, then the outbox's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from runtime import _ids
from runtime.api._host import Host
from runtime.api._outbox import Outbox
from runtime.exceptions import InternalError, TaskError
from runtime.protocol import codec, common_pb2, node_pb2


def decode(oid: bytes, blob: bytes) -> Any:
    """The value of object ``oid`` from its bytes; raises the error it holds instead."""
    if codec.is_error(blob):
        err = codec.deserialize(blob)
        if isinstance(err, TaskError):
            raise err.as_instanceof_cause()
        if isinstance(err, BaseException):
            raise err
        raise InternalError(f"object {_ids.short(oid)} holds an error that is not an "
                            f"exception: {err!r}. This is a cellray bug; please report it.")
    return codec.deserialize(blob)


def check_sendable(what: str, nbytes: int, max_message_bytes: int) -> None:
    """A driver on another machine than its node sends an object in one message: refuse
    one too large for it (``what`` starts the message)."""
    if nbytes > max_message_bytes - (1 << 20):
        raise ValueError(
            f"{what} is {nbytes / 2**20:.1f} MiB: a driver on another machine than its node "
            f"sends objects in one message, at most max_message_bytes ({max_message_bytes / 2**20:.0f} "
            "MiB). Make it in a task on the cluster instead, or raise CELLRAY_MAX_MESSAGE_BYTES "
            "on every process.")


class ObjectTable:
    """Ready objects (id -> ``ObjectData``: inline bytes or a shm path) and ref counts."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.cv = threading.Condition(threading.Lock())
        self._objects: dict[bytes, common_pb2.ObjectData] = {}
        #: Objects asked for (or expected as results) and not yet received.
        self._requested: set[bytes] = set()
        #: Local ObjectRef counts.
        self._local_refs: dict[bytes, int] = {}
        #: Objects this process mapped from the store and told the node so (``first_mapping``).
        self._mapped: set[bytes] = set()

    # ---- references ----------------------------------------------------------------

    def incref(self, oid: bytes, announce: bool) -> None:
        """A new local ObjectRef; ``announce`` when the node does not already count us."""
        with self.cv:
            n = self._local_refs.get(oid, 0)
            self._local_refs[oid] = n + 1
            if n == 0 and announce:
                self._outbox.add_ref(oid)

    def decref(self, oid: bytes) -> None:
        """A local ObjectRef is gone; the last one frees the data and tells the node."""
        with self.cv:
            n = self._local_refs.get(oid, 0) - 1
            if n > 0:
                self._local_refs[oid] = n
                return
            self._local_refs.pop(oid, None)
            self._objects.pop(oid, None)
            self._mapped.discard(oid)
            self._outbox.remove_ref(oid)

    # ---- data ----------------------------------------------------------------------

    def arrived(self, data: common_pb2.ObjectData) -> None:
        """The node sent an object (kept only while a local ref wants it); no wake-up.

        An object with neither bytes nor a path is ready on another node: it counts as ready
        (``wait``), and reading it asks the node for it (``elsewhere``)."""
        oid = data.object_id
        if oid in self._local_refs and (data.inline or data.shm_path or oid not in self._objects):
            self._objects[oid] = data
            self._mapped.discard(oid)  # maybe another copy: mapping it is told again
        self._requested.discard(oid)

    def elsewhere(self, ids: Sequence[bytes]) -> list[bytes]:
        """Those of ``ids`` known to be ready on another node only, now asked for again."""
        objects = self._objects
        with self.cv:
            far = [i for i in dict.fromkeys(ids)
                   if (d := objects.get(i)) is not None and not d.inline and not d.shm_path]
            for oid in far:
                del objects[oid]
        if far:
            self._requested.difference_update(far)
            self.request(far)
        return far

    def first_mapping(self, oid: bytes) -> bool:
        """True the first time this process maps the copy of ``oid`` it was last sent."""
        if oid in self._mapped:
            return False
        self._mapped.add(oid)
        return True

    def failed(self, object_id: bytes, error: bytes) -> None:
        """The node sent an object's error blob in place of its value; no wake-up."""
        self._objects[object_id] = common_pb2.ObjectData(
            object_id=object_id, inline=error, size=len(error))
        self._requested.discard(object_id)

    def wake(self) -> None:
        """Wake every waiter (after a batch, or when the session ends)."""
        with self.cv:
            self.cv.notify_all()

    def stored(self, data: common_pb2.ObjectData) -> None:
        """A value this process put."""
        with self.cv:
            self._objects[data.object_id] = data

    def expect(self, ids: Sequence[bytes]) -> None:
        """Results the node will push here: no need to ask for them."""
        self._requested.update(ids)

    def data(self, oid: bytes) -> common_pb2.ObjectData | None:
        return self._objects.get(oid)

    def forget(self, oid: bytes) -> None:
        """Drop what we know of ``oid`` (its shm file moved) so the next wait asks again."""
        with self.cv:
            self._objects.pop(oid, None)
        self._requested.discard(oid)

    def request(self, ids: list[bytes]) -> None:
        """Ask the node for those of ``ids`` not asked for yet."""
        ask = [i for i in ids if i not in self._requested]
        if not ask:
            return
        self._requested.update(ask)
        op = node_pb2.ClientOp()
        op.get.object_ids.extend(ask)
        self._outbox.send(op)

    # ---- waiting -------------------------------------------------------------------

    def failed_one(self, ids: Iterable[bytes]) -> bytes | None:
        """The first of ``ids`` here whose value is an error (a failed task), or None."""
        objects = self._objects
        for oid in ids:
            d = objects.get(oid)
            if d is not None and d.inline and codec.is_error(d.inline):
                return oid
        return None

    def wait(self, ids: Sequence[bytes], num_ready: int, timeout: float | None,
             check: Callable[[], None], host: Host, fail_fast: bool = False) -> list[bytes]:
        """Wait until ``num_ready`` of ``ids`` are here (or ``timeout``); return the ready ones.

        ``fail_fast``: return as soon as one that arrived holds an error (``get`` raises it
        without waiting for the rest, as Ray's does).

        ``check`` raises when the session is closed or broken. A host that lends while
        waiting (a worker's task without a deadline) tells the node the task blocks and
        runs the tasks the node sends meanwhile, those it waits for among them.
        """
        check()
        objects = self._objects
        unique = list(dict.fromkeys(ids))
        # Only the ids still missing are looked at again on each wake-up.
        missing = [i for i in unique if i not in objects]
        need = min(num_ready, len(unique))
        if len(unique) - len(missing) >= need or (fail_fast and self.failed_one(unique)):
            return [i for i in ids if i in objects]
        self.request(missing)
        deadline = None if timeout is None else time.monotonic() + timeout
        blocked = False
        cv = self.cv
        try:
            with cv:
                while True:
                    arrived = [i for i in missing if i in objects] if fail_fast else ()
                    missing = [i for i in missing if i not in objects]
                    if len(unique) - len(missing) >= need or (arrived and self.failed_one(arrived)):
                        return [i for i in ids if i in objects]
                    check()
                    if host.lends_while_waiting(deadline is not None):
                        if not blocked:
                            blocked = True
                            cv.release()
                            try:
                                host.set_blocked(True, missing)
                            finally:
                                cv.acquire()
                        # Looked at under the lock: the reader queues a task, then notifies
                        # under it, so a task arriving after this look still wakes us.
                        if host.has_pending():
                            cv.release()
                            try:
                                host.run_pending()
                            finally:
                                cv.acquire()
                            continue
                    if deadline is None:
                        cv.wait()
                    else:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return [i for i in ids if i in objects]
                        cv.wait(left)
        finally:
            if blocked:
                host.set_blocked(False, [])
