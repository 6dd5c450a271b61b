"""The errors cellray raises, all under one base.

::

    ClusterError                      anything cellray raises on its own behalf
    ├── TaskError                     user code raised; also an instance of the original type
    ├── WorkerCrashedError            the worker running a task died and retries are spent
    ├── OutOfMemoryError              the node's memory monitor killed the task's worker, retries spent
    ├── NodeDiedError                 the node holding a task or object died
    ├── ActorDiedError                an actor is dead (killed, constructor failed, restarts spent)
    ├── TaskCancelledError            the task was cancelled with ``cancel``
    ├── ObjectLostError               an object's bytes are gone and cannot be rebuilt
    │   ├── OwnerDiedError            ... because the process that owned it exited
    │   ├── ObjectCorruptError        ... because its file is incomplete (a ``ValueError``)
    │   └── ObjectFileMissingError    ... because its file is gone (a ``FileNotFoundError``)
    ├── ObjectStoreFullError          an object does not fit in the node's object store
    │   └── ObjectSpillError          ... because spilling to disk failed (unwritable, disk full)
    ├── ObjectStoreClosedError        the node's object store was closed (a ``RuntimeError``)
    ├── GetTimeoutError               ``get(timeout=...)`` expired (also a ``TimeoutError``)
    ├── ConnectionLostError           the cluster stopped answering (the peer's fault)
    │   └── NoLiveNodeError           the cluster has no live node to connect to
    ├── ClientClosedError             this client was shut down (your own call's fault)
    ├── BlockingCallError             a blocking call inside a handler on the IO thread (a ``RuntimeError``)
    ├── NotInitializedError           no cluster connection yet: call ``init()`` (a ``RuntimeError``)
    ├── AlreadyInitializedError       ``init()`` called twice (a ``RuntimeError``)
    ├── UnauthenticatedError          wrong or missing cluster token (a ``PermissionError``)
    ├── IncompatibleVersionError      peers run different Python/cloudpickle versions
    ├── InvalidRequestError           a server refused a malformed request (a ``ValueError``)
    ├── NotFoundError                 the cluster has no such entry (a ``LookupError``)
    │   ├── ActorNotFoundError        no live actor has that name (also a ``ValueError``)
    │   └── FunctionNotFoundError     a task's function or class is not in the GCS
    ├── ActorNameTakenError           an actor of that name exists already (a ``ValueError``)
    ├── ClusterStartError             a cluster process died or stayed silent at start (a ``RuntimeError``)
    ├── ConfigError                   a setting is out of range or does not parse (a ``ValueError``)
    │   └── UnknownSettingError       ... or no setting has that name (also a ``TypeError``)
    ├── TokenFileError                the cluster token file does not exist (a ``FileNotFoundError``)
    ├── RpcTimeoutError               a server did not answer in time (a ``TimeoutError``)
    └── InternalError                 a cellray bug: please report it with the logs

Ray's names are aliases for code written against Ray: ``RayError``, ``RayTaskError``,
``RayActorError``, ``ObjectStoreFullError``, ``GetTimeoutError``, ``TaskCancelledError``,
``WorkerCrashedError``, ``ObjectLostError``, ``OwnerDiedError``, ``OutOfMemoryError``.

Every exception keeps its data in attributes, builds its message in ``__str__`` and
pickles (errors travel from workers to drivers).
"""

from __future__ import annotations

import types
from typing import Any

__all__ = [
    "ActorDiedError",
    "ActorNameTakenError",
    "ActorNotFoundError",
    "ActorUnschedulableError",
    "AlreadyInitializedError",
    "BlockingCallError",
    "ClientClosedError",
    "ClusterError",
    "ClusterStartError",
    "ConfigError",
    "ConnectionLostError",
    "FunctionNotFoundError",
    "GetTimeoutError",
    "IncompatibleVersionError",
    "InternalError",
    "InvalidRequestError",
    "NoLiveNodeError",
    "NodeDiedError",
    "NotFoundError",
    "NotInitializedError",
    "ObjectCorruptError",
    "ObjectFileMissingError",
    "ObjectLostError",
    "ObjectSpillError",
    "ObjectStoreClosedError",
    "ObjectStoreFullError",
    "OutOfMemoryError",
    "OwnerDiedError",
    "RayActorError",
    "RayError",
    "RayTaskError",
    "RpcTimeoutError",
    "RuntimeEnvSetupError",
    "TaskCancelledError",
    "TaskError",
    "TaskUnschedulableError",
    "TokenFileError",
    "UnauthenticatedError",
    "UnknownSettingError",
    "WorkerCrashedError",
]


class ClusterError(Exception):
    """Base of every error cellray raises on its own behalf."""

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, value in fields.items():
            setattr(self, key, value)
        self._fields = fields

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.message, self._fields))


def _rebuild(cls: type[ClusterError], message: str, fields: dict[str, Any]) -> ClusterError:
    return cls(message, **fields)


class TaskError(ClusterError):
    """User code raised inside a task or actor method.

    ``get`` raises an instance of a class derived from both ``TaskError`` and the
    original exception's class, so ``except ValueError:`` still catches a remote
    ``ValueError``. The message holds the remote traceback; ``cause`` is the original
    exception (or None when it could not be pickled), ``function_name``, ``task_id``,
    ``node_id`` and ``pid`` say where it ran.

    Its traceback shows the user's frames only: the caller's up to ``get``, one line
    naming the task and where it ran, then the remote frames of the user's code, functions
    defined in a notebook cell named ``Cell In[5], line 3`` with the cell's lines.
    cellray's own frames are hidden on both sides; set ``CELLRAY_TRACEBACK=full`` (read
    when the error is shown, so ``%env CELLRAY_TRACEBACK=full`` works in a notebook) to
    see them all. ``remote_traceback`` holds the remote text without cellray's frames,
    ``full_traceback`` with them.
    """

    cause: BaseException | None
    cause_type_name: str
    function_name: str
    task_id: str
    node_id: str
    pid: int
    remote_traceback: str
    full_traceback: str

    def __init__(self, message: str = "", *, function_name: str = "", task_id: str = "",
                 node_id: str = "", pid: int = 0, remote_traceback: str = "",
                 cause: BaseException | None = None, cause_type_name: str = "",
                 full_traceback: str = "") -> None:
        super().__init__(message, function_name=function_name, task_id=task_id, node_id=node_id,
                         pid=pid, remote_traceback=remote_traceback, cause=cause,
                         cause_type_name=cause_type_name, full_traceback=full_traceback)

    def boundary(self) -> str:
        """The line between the caller's frames and the remote ones: which task, where."""
        return (f"{self.function_name}() (task {self.task_id[:12]}) raised on node "
                f"{self.node_id[:12]}, worker pid {self.pid}")

    def shown_traceback(self) -> str:
        """The remote traceback as shown: cellray's frames hidden unless
        ``CELLRAY_TRACEBACK=full``, cells named as IPython names them."""
        from runtime import _tracebacks

        text = (self.full_traceback or self.remote_traceback) if _tracebacks.full() \
            else self.remote_traceback
        note = _tracebacks.mode_note()
        return _tracebacks.plain(text).rstrip() + (f"\n{note}" if note else "")

    def __str__(self) -> str:
        return f"{self.boundary()}:\n\n{self.shown_traceback()}"

    def _render_traceback_(self) -> list[str]:
        """What IPython shows (it calls this hook): see ``runtime._tracebacks.render``."""
        from runtime import _tracebacks

        return _tracebacks.render(self, str(self))

    def __reduce__(self) -> Any:
        # Always rebuilt as a plain TaskError: the dual class is made again on demand.
        return (_rebuild, (TaskError, self.message, self._fields))

    def as_instanceof_cause(self) -> TaskError:
        """This error as an instance of ``TaskError`` *and* the cause's class.

        A cause that is cellray's own error (the task met a lost object, a dead owner or
        actor: ``ObjectLostError`` for an argument that could not be rebuilt) is also its
        ``__cause__``, as an ``ActorDiedError``'s constructor error is: that failure came
        first. A user's exception is not: the dual class is already of its type.
        """
        cause = self.cause
        if cause is None:
            return self
        cls = _dual_class(type(cause))
        if cls is None:
            return self
        args = tuple(getattr(cause, "args", ()))
        try:
            try:
                # Some builtins take their state only here (ExceptionGroup's message and
                # exceptions); the others ignore the arguments.
                err = cls.__new__(cls, *args)
            except TypeError:
                err = cls.__new__(cls)
            err.args = args
            _copy_builtin_fields(cause, err)
            err.__dict__.update(getattr(cause, "__dict__", {}))
            err.__dict__.update(self.__dict__)
        except Exception:  # noqa: BLE001 - a class we cannot imitate: the plain TaskError says it all
            return self
        if isinstance(cause, ClusterError):
            err.__cause__ = cause
        return err


def _copy_builtin_fields(src: BaseException, dst: BaseException) -> None:
    """Copy the C-level fields of builtin exception classes (``OSError.errno``,
    ``UnicodeError.start``, ``StopIteration.value`` ...), which ``__dict__`` does not hold
    and ``__new__`` without ``__init__`` does not set."""
    for klass in type(src).__mro__:
        if klass.__module__ != "builtins" or not issubclass(klass, BaseException):
            continue
        for name, member in vars(klass).items():
            # Dunder slots (__class__, __traceback__, __cause__ ...) are not the error's data.
            if name.startswith("__") or not isinstance(
                    member, (types.GetSetDescriptorType, types.MemberDescriptorType)):
                continue
            try:
                setattr(dst, name, getattr(src, name))
            except (AttributeError, TypeError, ValueError):  # read-only or computed
                pass


_DUAL: dict[type, type | None] = {}


def _dual_class(cause_cls: type[BaseException]) -> type[TaskError] | None:
    if cause_cls in _DUAL:
        return _DUAL[cause_cls]
    cls: type | None
    if issubclass(cause_cls, TaskError) or not issubclass(cause_cls, Exception):
        cls = None
    else:
        try:
            cls = type(f"TaskError({cause_cls.__name__})", (TaskError, cause_cls), {
                "__str__": TaskError.__str__, "__reduce__": TaskError.__reduce__,
                "__module__": __name__, "__init__": TaskError.__init__,
            })
        except TypeError:  # layout conflicts, final classes
            cls = None
    _DUAL[cause_cls] = cls
    return cls


class WorkerCrashedError(ClusterError):
    """The worker process running a task died (crash, ``os._exit``, kill) and its retries are spent."""


class OutOfMemoryError(ClusterError):
    """The node's memory monitor killed the worker running a task, and its OOM retries are
    spent (``task_oom_retries``, counted apart from ``max_retries``).

    The machine's memory in use passed ``memory_usage_threshold``; the message gives the
    node's memory used and total, the worker's pid and its RSS. Its fields: ``task_id``,
    ``node_id``, ``pid``, ``memory_used``, ``memory_total``, ``threshold``, ``rss``.
    """


class NodeDiedError(ClusterError):
    """The node that held a task or object died."""


class ActorDiedError(ClusterError):
    """The actor is dead: killed, its constructor raised, or its restarts are spent.

    When its constructor raised, that exception (of the user's type, with its remote
    traceback) is this error's ``__cause__``.
    """


class TaskUnschedulableError(ClusterError):
    """The task can never be placed: e.g. its ``NodeAffinitySchedulingStrategy(soft=False)``
    names a node that is dead or not in the cluster."""


class ActorUnschedulableError(ClusterError):
    """The actor can never be placed (as ``TaskUnschedulableError``, for an actor's creation)."""


class TaskCancelledError(ClusterError):
    """The task was cancelled with ``cancel()`` before it could finish."""


class ObjectLostError(ClusterError):
    """An object's bytes are gone from every node and cannot be rebuilt."""


class OwnerDiedError(ObjectLostError):
    """An object is lost because the process that owned it exited."""


class ObjectCorruptError(ObjectLostError, ValueError):
    """An object's shared-memory file is empty or not the size its producer announced
    (the producer died while writing it): the object cannot be read."""


class ObjectFileMissingError(ObjectLostError, FileNotFoundError):
    """An object's shared-memory file does not exist (never written, or freed or spilled
    since it was located: locate it again)."""


class ObjectStoreFullError(ClusterError):
    """An object does not fit in the node's object store, even after spilling to disk."""


class ObjectSpillError(ObjectStoreFullError):
    """An object does not fit in the node's shared memory and spilling older objects to disk
    to make room failed: the spill directory cannot be made or written, or its disk is full.

    Only the new object is refused (its ``put`` raises, or its task fails with this error);
    objects stored before stay readable. Attributes: ``object_id``, ``size``, ``used`` and
    ``capacity`` (bytes), ``spill_dir``, ``reason`` (the OS error's text).
    """


class RuntimeEnvSetupError(ClusterError, RuntimeError):
    """A node could not set up a task's or actor's runtime environment (``runtime_env``):
    its package could not be fetched from the GCS or unpacked. The task fails with this
    error (Ray's ``RuntimeEnvSetupError``); its message says why.
    """


class ObjectStoreClosedError(ClusterError, RuntimeError):
    """The node's object store was closed (its node manager is stopping): nothing more is stored."""


class GetTimeoutError(ClusterError, TimeoutError):
    """``get(..., timeout=...)`` expired before every object was ready."""


class ConnectionLostError(ClusterError, ConnectionError):
    """The cluster (GCS or node manager) stopped answering, or could not be reached."""


class NoLiveNodeError(ConnectionLostError):
    """The cluster was reached but has no live node for this driver to connect to."""


class ClientClosedError(ClusterError):
    """This client was shut down; call ``runtime.init()`` again."""


class BlockingCallError(ClusterError, RuntimeError):
    """A call that waits on the cluster was made on cellray's IO thread.

    Output, event and log handlers run there; a blocking call from one would wait for
    the thread it blocks. Hand the work to another thread instead.
    """


class NotInitializedError(ClusterError, RuntimeError):
    """No cluster connection in this process yet: call ``runtime.init()`` first."""


class AlreadyInitializedError(ClusterError, RuntimeError):
    """``runtime.init()`` was called again while connected (use ``ignore_reinit_error``)."""


class UnauthenticatedError(ClusterError, PermissionError):
    """A cluster server refused the call: the cluster token is missing or wrong."""


class IncompatibleVersionError(ClusterError, RuntimeError):
    """Two processes of the cluster run different Python or cloudpickle versions."""


class InvalidRequestError(ClusterError, ValueError):
    """A cluster server refused a malformed request (wrong ids, missing fields)."""


class NotFoundError(ClusterError, LookupError):
    """The cluster holds no such entry (object, function, row)."""


class ActorNotFoundError(NotFoundError, ValueError):
    """``get_actor(name)`` found no live actor of that name in the namespace.

    A ``ValueError`` too, as Ray raises for an unknown name.
    """


class FunctionNotFoundError(NotFoundError):
    """A task's function or actor class is not in the GCS (its driver's export was lost)."""


class ActorNameTakenError(ClusterError, ValueError):
    """An actor of that name exists already in the namespace (a ``ValueError``, as in Ray)."""


class ClusterStartError(ClusterError, RuntimeError):
    """A cluster process (GCS, global scheduler, node) exited or stayed silent before it
    was ready; the message holds the end of its log."""


class ConfigError(ClusterError, ValueError):
    """A setting (a ``CELLRAY_*`` variable, a flag, an ``init`` argument) does not parse or
    is out of range; the message names it and what it accepts."""


class UnknownSettingError(ConfigError, TypeError):
    """No setting has the name given (a ``TypeError``, as for an unknown keyword)."""


class TokenFileError(ClusterError, FileNotFoundError):
    """The cluster token file given does not exist."""


class RpcTimeoutError(ClusterError, TimeoutError):
    """A cluster server did not answer within the call's deadline."""


class InternalError(ClusterError):
    """A cellray bug. Please report it with the session's logs."""


# Ray's names, for code written against Ray.
RayError = ClusterError
RayTaskError = TaskError
RayActorError = ActorDiedError
