"""How Python values become bytes, and back, without copying large buffers.

One layout serves both as an inline ``bytes`` (small objects riding in messages) and as
a shared-memory file (large objects in the node's store)::

    offset 0   header   magic b"CRY" | version u8 | flags u8 | 3 reserved
                        | nbuf u32 | pickle_len u64                      (20 bytes)
    offset 20  table    nbuf x (offset u64, length u64), from the layout's start
               pickle   pickle_len bytes, protocol 5
               buffers  each out-of-band buffer, starting on a 64-byte boundary

Flag bit 0 marks an *error*: the pickled value is an exception that ``get`` must raise.

Pickle protocol 5 hands every ``PickleBuffer`` (numpy arrays among them) to a
``buffer_callback`` instead of copying it into the stream, so ``serialize`` only keeps
views of the caller's memory and ``Serialized.write_into`` copies each buffer exactly
once, straight into its destination (usually a shared-memory mapping). ``deserialize``
passes the buffers back as slices of the data it was given: an array read from a
read-only mapping is a read-only view of that mapping.

Values are pickled with cloudpickle, which pickles functions and classes defined in
``__main__`` or a notebook by value. Values that cannot contain such things (ints,
floats, bools, str, bytes, None, flat lists/tuples/dicts of those, plain numpy arrays)
take the C pickler directly: it is about five times cheaper for small values.

Example::

    >>> s = serialize({"x": 1})
    >>> deserialize(s.to_bytes())
    {'x': 1}

cloudpickle payloads only load under the same Python and cloudpickle versions, and
loading one runs arbitrary code: only load data from an authenticated peer.
"""

from __future__ import annotations

import contextvars
import copyreg
import hashlib
import io
import linecache
import logging
import os
import pickle
import struct
import sys
import types
from collections import ChainMap
from collections.abc import Sequence
from typing import Any, Final

import cloudpickle

from runtime.exceptions import ActorDiedError, TaskError

logger = logging.getLogger(__name__)

__all__ = [
    "ALIGNMENT",
    "FORMAT_VERSION",
    "MAGIC",
    "Serialized",
    "deserialize",
    "is_error",
    "record_ref",
    "serialize",
    "serialize_function",
]

MAGIC: Final = b"CRY"
FORMAT_VERSION: Final = 1
#: Buffers start on this boundary (relative to the layout's start; a mapping is
#: page-aligned, so they are aligned in memory too): enough for AVX-512 loads.
ALIGNMENT: Final = 64
_FLAG_ERROR: Final = 0x01
_PROTOCOL: Final = 5

_HEADER = struct.Struct("<3sBB3xIQ")
_ENTRY = struct.Struct("<QQ")
_HEADER_SIZE: Final = _HEADER.size
_ENTRY_SIZE: Final = _ENTRY.size
_HEADER_NO_BUFFERS = (_HEADER.pack(MAGIC, FORMAT_VERSION, 0, 0, 0)[:-8],
                      _HEADER.pack(MAGIC, FORMAT_VERSION, _FLAG_ERROR, 0, 0)[:-8])
_PLEN = struct.Struct("<Q")
#: Pickles up to this size are sliced out of ``bytes`` (a copy) rather than viewed.
_SMALL_PICKLE: Final = 64 * 1024

# Types whose pickles cannot hold code, so the C pickler is exact for them.
_SCALARS: Final = frozenset((int, float, bool, str, bytes, type(None)))
_CONTAINERS: Final = frozenset((list, tuple, dict))

#: ObjectRefs met while pickling the current value; None outside ``serialize``.
_contained: contextvars.ContextVar[list[bytes] | None] = contextvars.ContextVar(
    "cellray_contained_refs", default=None)


def record_ref(object_id: bytes) -> None:
    """Record that an ObjectRef with ``object_id`` is being pickled inside a value.

    ``ObjectRef.__reduce__`` calls this, so ``serialize`` learns which objects a value
    refers to (``Serialized.contained_refs``) and the owner can keep them alive. Outside
    ``serialize`` (a user pickling a ref by hand) it does nothing.
    """
    refs = _contained.get()
    if refs is not None:
        refs.append(object_id)


class Serialized:
    """A value in the wire/store layout, with large buffers not yet copied.

    It holds views of the original value's buffers: do not mutate the value until the
    bytes are written (``write_into``/``to_bytes``), as with Ray's ``put``.
    """

    __slots__ = ("_buffers", "_head", "_pickle", "contained_refs", "is_error", "nbytes")

    #: Total size of the layout in bytes.
    nbytes: int
    #: Ids of the ObjectRefs pickled inside the value, in pickling order.
    contained_refs: list[bytes]
    #: Whether the value is an exception that ``get`` must raise.
    is_error: bool

    def __init__(self, head: bytes, pickled: bytes, buffers: list[tuple[int, memoryview]],
                 nbytes: int, contained_refs: list[bytes], error: bool) -> None:
        self._head = head  # header and buffer table
        self._pickle = pickled
        self._buffers = buffers  # (offset, 1-D byte view) per out-of-band buffer
        self.nbytes = nbytes
        self.contained_refs = contained_refs
        self.is_error = error

    def write_into(self, mv: memoryview) -> None:
        """Write the whole layout into ``mv``, a writable buffer of exactly ``nbytes``.

        Each out-of-band buffer is copied once, straight from the value's memory.

        Raises
        ------
        ValueError
            ``mv`` is not exactly ``nbytes`` long.
        """
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        if mv.nbytes != self.nbytes:
            raise ValueError(f"write_into needs a buffer of exactly {self.nbytes} bytes, "
                             f"got {mv.nbytes}")
        head, pickled = self._head, self._pickle
        end = len(head)
        mv[:end] = head
        mv[end:end + len(pickled)] = pickled
        end += len(pickled)
        for offset, buf in self._buffers:
            # Zero the alignment gap so the layout is the same whatever the buffer held.
            if offset > end:
                mv[end:offset] = bytes(offset - end)
            end = offset + buf.nbytes
            mv[offset:end] = buf

    def parts(self) -> list[bytes | memoryview]:
        """The layout as consecutive pieces (padding included) whose concatenation is
        ``to_bytes()``: for vectored writes (``os.writev``) and chunked transfers that
        must not copy the buffers first."""
        parts: list[bytes | memoryview] = [self._head, self._pickle]
        end = len(self._head) + len(self._pickle)
        for offset, buf in self._buffers:
            if offset > end:
                parts.append(bytes(offset - end))
            parts.append(buf)
            end = offset + buf.nbytes
        return parts

    def to_bytes(self) -> bytes:
        """The whole layout as one ``bytes`` (for inline objects and messages)."""
        if not self._buffers:
            return self._head + self._pickle
        return b"".join(self.parts())

    def __repr__(self) -> str:
        return (f"<Serialized {self.nbytes} bytes, {len(self._buffers)} buffers, "
                f"{len(self.contained_refs)} refs{', error' if self.is_error else ''}>")


def _only_scalars(value: Any) -> bool:
    """Whether a list, tuple or dict holds only scalars (one level deep).

    The check runs at C speed (``issuperset(map(type, ...))``), so it never costs more
    than the cloudpickle overhead it saves; nested containers go to cloudpickle.
    """
    if type(value) is dict:
        return (_SCALARS.issuperset(map(type, value))
                and _SCALARS.issuperset(map(type, value.values())))
    return _SCALARS.issuperset(map(type, value))


def _is_plain_array(value: Any) -> bool:
    """Whether ``value`` is exactly a numpy array without Python objects inside."""
    # numpy is looked up, never imported: without it loaded no value can be an array.
    np = sys.modules.get("numpy")
    return np is not None and type(value) is np.ndarray and not value.dtype.hasobject


def _layout(pickled: bytes, pickle_buffers: Sequence[pickle.PickleBuffer],
            error: bool, refs: list[bytes]) -> Serialized:
    flags = _FLAG_ERROR if error else 0
    if not pickle_buffers:
        head = _HEADER_NO_BUFFERS[flags] + _PLEN.pack(len(pickled))
        return Serialized(head, pickled, [], _HEADER_SIZE + len(pickled), refs, error)
    n = len(pickle_buffers)
    end = _HEADER_SIZE + n * _ENTRY_SIZE + len(pickled)
    table = []
    buffers = []
    for pb in pickle_buffers:
        raw = pb.raw()  # 1-D bytes view; numpy only goes out of band when contiguous
        offset = -(-end // ALIGNMENT) * ALIGNMENT
        table.append(_ENTRY.pack(offset, raw.nbytes))
        buffers.append((offset, raw))
        end = offset + raw.nbytes
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, n, len(pickled)) + b"".join(table)
    return Serialized(head, pickled, buffers, end, refs, error)


def _restore_code(reduced: tuple[Any, tuple[Any, ...]], filename: str,
                  lines: list[str] | None) -> types.CodeType:
    """Unpickle a code object with its real file name; register shipped source lines so
    tracebacks on this side show them (e.g. a notebook cell's code)."""
    code: types.CodeType = reduced[0](*reduced[1])
    if lines and filename not in linecache.cache:
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return code.replace(co_filename=filename)


def _reduce_code(code: types.CodeType) -> tuple[Any, tuple[Any, ...]]:
    # cloudpickle names every shipped code object "<dynamic-code>": keep the real file so
    # remote tracebacks point at it, and ship the source when it is not a file on disk.
    reduced = cloudpickle.cloudpickle._code_reduce(code)
    filename = code.co_filename
    lines = None if os.path.isfile(filename) else (linecache.getlines(filename) or None)
    return _restore_code, (reduced, filename, lines)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    dispatch_table = ChainMap({types.CodeType: _reduce_code}, cloudpickle.Pickler._dispatch_table,
                              copyreg.dispatch_table)


def _dumps(value: object, buffer_callback: Any = None) -> bytes:
    f = io.BytesIO()
    _Pickler(f, protocol=_PROTOCOL, buffer_callback=buffer_callback).dump(value)
    return f.getvalue()


def _pickle_any(value: object, error: bool) -> Serialized:
    """Pickle with cloudpickle, collecting contained ObjectRefs."""
    buffers: list[pickle.PickleBuffer] = []
    refs: list[bytes] = []
    token = _contained.set(refs)
    try:
        pickled = _dumps(value, buffers.append)
    finally:
        _contained.reset(token)
    return _layout(pickled, buffers, error, refs)


def serialize(value: object, *, error: bool = False) -> Serialized:
    """Turn ``value`` into the layout; large buffers are referenced, not copied.

    With ``error=True`` the value is an exception to be raised by ``get``, and this never
    raises because of it. The pickle is loaded back once to check it (exceptions with a
    custom ``__init__`` that takes required arguments pickle fine and fail to load). When
    that fails, a ``TaskError`` is stored again without its ``cause`` (keeping the task,
    node and remote traceback, plus the reason); anything else, or a TaskError that still
    fails, becomes ``RuntimeError("<type>: <message> (the original exception could not be
    pickled: <reason>)")``.

    Raises
    ------
    Exception
        Whatever cloudpickle raises for an unpicklable (non-error) value, for instance a
        ``TypeError`` for a lock or an open socket.

    Example::

        >>> serialize(42).nbytes  # 20-byte header + 5-byte pickle
        25
    """
    if error:
        return _serialize_error(value)
    cls = type(value)
    if cls in _SCALARS or (cls in _CONTAINERS and _only_scalars(value)):
        # No code, no ObjectRefs, no buffers: the C pickler alone. This is the hot path
        # for task arguments and small results, so it is kept inline.
        pickled = pickle.dumps(value, protocol=_PROTOCOL)
        return Serialized(_HEADER_NO_BUFFERS[0] + _PLEN.pack(len(pickled)), pickled, [],
                          _HEADER_SIZE + len(pickled), [], False)
    if _is_plain_array(value):
        buffers: list[pickle.PickleBuffer] = []
        pickled = pickle.dumps(value, protocol=_PROTOCOL, buffer_callback=buffers.append)
        return _layout(pickled, buffers, False, [])
    return _pickle_any(value, False)


def _serialize_error(exc: object) -> Serialized:
    """Serialize an exception, degrading instead of raising (see ``serialize``)."""
    try:
        return _loadable_error(exc)
    except Exception as why:  # anything at all: this path must not raise
        reason = why
        logger.debug("could not pickle %s; degrading it", type(exc).__name__, exc_info=True)
    if isinstance(exc, TaskError) and exc.cause is not None:
        try:  # a cause whose __init__ takes other arguments than its args: load it without
            return _loadable_error(TaskError(exc.message, **{**exc._fields,
                                                             "cause": _NoInit(exc.cause)}))
        except Exception:  # anything at all: drop the cause, next
            logger.debug("could not pickle %s without its __init__", type(exc.cause).__name__,
                         exc_info=True)
        # TaskError carries everything the driver shows without its cause: keep the
        # task, node and traceback, drop only the cause (documented as None then).
        cause_name = exc.cause_type_name or type(exc.cause).__name__
        try:
            return _loadable_error(TaskError(
                exc.message, function_name=exc.function_name, task_id=exc.task_id,
                node_id=exc.node_id, pid=exc.pid, cause=None, cause_type_name=cause_name,
                remote_traceback=(f"{exc.remote_traceback.rstrip()}\n(the original "
                                  f"{cause_name} could not be pickled: {_safe_str(reason)})")))
        except Exception:  # anything pickling raises: fall back to the plain error below
            logger.debug("could not pickle the TaskError without its cause", exc_info=True)
    return _pickle_any(RuntimeError(
        f"{type(exc).__name__}: {_safe_str(exc)} "
        f"(the original exception could not be pickled: {_safe_str(reason)})"), True)


class _NoInit:
    """Pickles an exception so that loading it skips its ``__init__``: a user's exception
    whose ``__init__`` takes other arguments than the ``args`` it passes on (pickle calls
    ``cls(*args)``) still loads, of its class, with its args and attributes."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> Any:
        exc = self.exc
        return (_revive, (type(exc), tuple(exc.args), dict(getattr(exc, "__dict__", {}))))


def _revive(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    try:
        exc = cls.__new__(cls, *args)
    except TypeError:
        exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def _loadable_error(exc: object) -> Serialized:
    s = _pickle_any(exc, True)
    # Exceptions often pickle fine and then fail to load (required __init__ arguments);
    # finding out here gives the driver a readable error instead of a failed load.
    deserialize(s.to_bytes())
    return s


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the original error
        return f"<{type(obj).__name__} whose str() failed>"


def _read_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """Validate the header; return (flags, number of buffers, pickle length)."""
    try:
        magic, version, flags, nbuf, plen = _HEADER.unpack_from(data, 0)
    except struct.error:
        raise ValueError(f"cellray object is truncated: {memoryview(data).nbytes} bytes is "
                         f"shorter than the {_HEADER_SIZE}-byte header") from None
    if magic != MAGIC:
        raise ValueError(f"not a cellray object: expected magic {MAGIC!r} at byte 0, found "
                         f"{magic!r}; the data is corrupt or was not written by "
                         f"runtime.protocol.codec")
    if version != FORMAT_VERSION:
        raise ValueError(f"cellray object has format version {version}, but this process reads "
                         f"version {FORMAT_VERSION}; run the same cellray version on every node")
    return flags, nbuf, plen


def _truncated(end: int, total: int) -> ValueError:
    return ValueError(f"cellray object is truncated: the header announces {end} bytes of "
                      f"header, table and pickle, but only {total} bytes are present")


def deserialize(data: bytes | bytearray | memoryview) -> object:
    """Load a value from the layout; out-of-band buffers are views of ``data``.

    Nothing large is copied: a numpy array comes back as a view of ``data`` (read-only
    when ``data`` is), which keeps ``data`` alive as long as the array lives.

    Raises
    ------
    ValueError
        ``data`` is not a cellray object (bad magic), was written by another format
        version, or is shorter than its header says.
    """
    flags, nbuf, plen = _read_header(data)
    if flags & _FLAG_ERROR:
        return _error(_load(data, nbuf, plen))
    return _load(data, nbuf, plen)


def _error(err: object) -> object:
    """An error just loaded: an ``ActorDiedError`` whose actor's constructor raised gets that
    exception (loaded here, where its class can be) as its ``__cause__``."""
    if isinstance(err, ActorDiedError):
        blob = getattr(err, "cause_error", b"")
        if blob:
            try:
                cause = deserialize(blob)
            except Exception:  # noqa: BLE001 - its class may not load here: the cause text stays
                return err
            if isinstance(cause, TaskError):
                cause = cause.as_instanceof_cause()  # of the user's type, as ``get`` raises it
            if isinstance(cause, BaseException):
                err.__cause__ = cause
    return err


def _load(data: bytes | bytearray | memoryview, nbuf: int, plen: int) -> object:
    start = _HEADER_SIZE + nbuf * _ENTRY_SIZE
    end = start + plen
    if not nbuf and type(data) is bytes and plen <= _SMALL_PICKLE:
        # Inline small objects: slicing bytes is cheaper than making a memoryview.
        if end > len(data):
            raise _truncated(end, len(data))
        return pickle.loads(data[start:end])
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    total = mv.nbytes
    if end > total:
        raise _truncated(end, total)
    if not nbuf:
        return pickle.loads(mv[start:end])
    buffers = []
    for i in range(nbuf):
        offset, length = _ENTRY.unpack_from(mv, _HEADER_SIZE + i * _ENTRY_SIZE)
        if offset < end or offset + length > total:
            raise ValueError(f"cellray object is truncated or corrupt: buffer {i} spans bytes "
                             f"{offset}..{offset + length}, outside {end}..{total}")
        buffers.append(mv[offset:offset + length])
    return pickle.loads(mv[start:end], buffers=buffers)


def is_error(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` holds an exception (flag bit 0). Raises ValueError like ``deserialize``."""
    flags, _, _ = _read_header(data)
    return bool(flags & _FLAG_ERROR)


def serialize_function(fn: object) -> tuple[bytes, bytes]:
    """Pickle a function or class by value: ``(cloudpickle bytes, sha1 digest of them)``.

    The 20-byte digest is the content hash under which the function is exported once to
    the GCS; the same code (and captured values) gives the same hash.
    """
    data = _dumps(fn)
    return data, hashlib.sha1(data).digest()


#: The value a streaming (generator) task stores after its last item: the end of the stream
#: (a tuple holding this project's own token, which no user value is).
STREAM_END: bytes = serialize(("cellray:end-of-stream", "3f6c1e0b9d5a")).to_bytes()
