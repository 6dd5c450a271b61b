"""ObjectRef: a future for an object in the cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from runtime.api import _context
from runtime.protocol import codec


class TaskID(str):
    """A task's id: its hex string, with the methods of Ray's ``TaskID`` (``ref.task_id().hex()``
    works as in Ray, and so does using it as a string)."""

    __slots__ = ()

    def hex(self) -> str:
        """The id as a hex string."""
        return str(self)

    def binary(self) -> bytes:
        """The id as bytes."""
        return bytes.fromhex(self)

    def is_nil(self) -> bool:
        """True for the all-zero id."""
        return not self.strip("0")


class ObjectRef:
    """A reference to an object in the cluster: a task's result or a ``put`` value.

    Pass it to ``get`` for the value, to ``wait`` to check readiness, or to other tasks
    (as a top-level argument it arrives as its value; inside a list or dict it stays a
    ref). The object lives while any ref to it exists anywhere in the cluster.
    ``await ref`` works in async code.
    """

    __slots__ = ("__weakref__", "_client", "_id")

    def __init__(self, object_id: bytes, *, _announce: bool = False) -> None:
        client = _context.current()
        self._id = object_id
        self._client = client
        client.incref(object_id, _announce)

    def binary(self) -> bytes:
        """The id as bytes."""
        return self._id

    def hex(self) -> str:
        """The id as a hex string."""
        return self._id.hex()

    def task_id(self) -> TaskID:
        """The id of the task that produces this object: a hex string, which also has
        Ray's ``TaskID`` methods (``hex()``, ``binary()``)."""
        return TaskID(self._id[:16].hex())

    def __del__(self) -> None:
        try:
            self._client.decref(self._id)
        except Exception:  # noqa: BLE001 - at interpreter shutdown anything may be half torn down
            pass

    def __reduce__(self) -> Any:
        codec.record_ref(self._id)
        return (_rebuild, (self._id,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def future(self) -> concurrent.futures.Future[Any]:
        """A ``concurrent.futures.Future`` that resolves to the value (or its error)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def resolve() -> None:
            try:
                fut.set_result(self._client.get_values([self._id], None)[0])
            except BaseException as e:  # noqa: BLE001 - the future carries whatever get raised
                fut.set_exception(e)

        import threading
        threading.Thread(target=resolve, name="cellray-future", daemon=True).start()
        return fut

    def __await__(self) -> Any:
        return asyncio.wrap_future(self.future()).__await__()


def _rebuild(object_id: bytes) -> ObjectRef:
    return ObjectRef(object_id, _announce=True)
