"""The public face of ``runtime``: exactly these names, each documented.

A name added to or removed from ``runtime/__init__.py`` is an API change: it must be
made here too, on purpose. Internals stay in underscored modules or sub-packages.
"""

from __future__ import annotations

import inspect
import types

import runtime
import runtime.exceptions

PUBLIC = {
    "ActorClass", "ActorHandle", "ClusterInfo", "ObjectRef", "ObjectRefGenerator", "RemoteFunction",
    "RuntimeContext",
    "available_resources", "cancel", "cluster_resources", "exceptions", "get", "get_actor",
    "get_gpu_ids", "get_runtime_context", "init", "is_initialized", "kill", "method", "nodes",
    "put", "remote", "shutdown", "state", "timeline", "wait",
}

EXCEPTIONS = {
    "ClusterError", "TaskError", "WorkerCrashedError", "NodeDiedError", "ActorDiedError",
    "TaskCancelledError", "ObjectLostError", "OwnerDiedError", "ObjectStoreFullError",
    "GetTimeoutError", "ConnectionLostError", "NoLiveNodeError", "ClientClosedError",
    "BlockingCallError", "ObjectStoreClosedError", "RuntimeEnvSetupError",
    "NotInitializedError", "AlreadyInitializedError", "UnauthenticatedError",
    "IncompatibleVersionError", "InvalidRequestError", "NotFoundError", "RpcTimeoutError",
    "InternalError", "RayError", "RayTaskError", "RayActorError",
    "ObjectCorruptError", "ObjectFileMissingError", "ActorNotFoundError", "FunctionNotFoundError",
    "ActorNameTakenError", "ClusterStartError", "ConfigError", "UnknownSettingError",
    "TokenFileError", "TaskUnschedulableError", "ActorUnschedulableError", "ObjectSpillError",
    "OutOfMemoryError",
}


def test_all_is_exactly_the_public_names() -> None:
    assert set(runtime.__all__) == PUBLIC
    assert len(runtime.__all__) == len(PUBLIC), "a name is listed twice in runtime.__all__"


def test_every_public_name_exists() -> None:
    missing = [n for n in PUBLIC if not hasattr(runtime, n)]
    assert not missing


def test_no_other_public_name_leaks_from_the_package() -> None:
    # Submodules Python attaches on import (runtime.api, runtime.config ...) are not API:
    # they are packages or modules, never functions or classes defined for users.
    leaked = sorted(
        n for n, v in vars(runtime).items()
        if not n.startswith("_") and n not in PUBLIC and not isinstance(v, types.ModuleType)
        and n != "annotations")  # the `from __future__ import annotations` feature object
    assert not leaked, f"public-looking names not in __all__: {leaked}"


def test_every_public_callable_has_a_docstring_a_user_reads() -> None:
    undocumented = sorted(n for n in PUBLIC
                          if callable(getattr(runtime, n)) and not inspect.getdoc(getattr(runtime, n)))
    assert not undocumented


def test_public_functions_are_typed() -> None:
    untyped = []
    for n in sorted(PUBLIC):
        obj = getattr(runtime, n)
        if inspect.isfunction(obj) and "return" not in obj.__annotations__:
            untyped.append(n)
    assert not untyped, f"public functions without a return annotation: {untyped}"


def test_the_exception_tree_is_pinned() -> None:
    assert set(runtime.exceptions.__all__) == EXCEPTIONS
    for n in EXCEPTIONS:
        cls = getattr(runtime.exceptions, n)
        assert issubclass(cls, runtime.exceptions.ClusterError), n


def test_exceptions_keep_the_builtin_bases_code_relies_on() -> None:
    e = runtime.exceptions
    assert issubclass(e.GetTimeoutError, TimeoutError)
    assert issubclass(e.RpcTimeoutError, TimeoutError)
    assert issubclass(e.ConnectionLostError, ConnectionError)
    assert issubclass(e.NoLiveNodeError, e.ConnectionLostError)
    assert issubclass(e.NotInitializedError, RuntimeError)
    assert issubclass(e.AlreadyInitializedError, RuntimeError)
    assert issubclass(e.BlockingCallError, RuntimeError)
    assert issubclass(e.ObjectStoreClosedError, RuntimeError)
    assert issubclass(e.UnauthenticatedError, PermissionError)
    assert issubclass(e.InvalidRequestError, ValueError)
    assert issubclass(e.NotFoundError, LookupError)
    assert issubclass(e.OwnerDiedError, e.ObjectLostError)
    assert issubclass(e.ObjectCorruptError, e.ObjectLostError)
    assert issubclass(e.ObjectCorruptError, ValueError)
    assert issubclass(e.ObjectFileMissingError, e.ObjectLostError)
    assert issubclass(e.ObjectFileMissingError, FileNotFoundError)
    assert issubclass(e.ActorNotFoundError, e.NotFoundError) and issubclass(e.ActorNotFoundError, ValueError)
    assert issubclass(e.FunctionNotFoundError, e.NotFoundError)
    assert issubclass(e.ActorNameTakenError, ValueError)
    assert issubclass(e.ClusterStartError, RuntimeError)
    assert issubclass(e.ConfigError, ValueError)
    assert issubclass(e.UnknownSettingError, e.ConfigError) and issubclass(e.UnknownSettingError, TypeError)
    assert issubclass(e.TokenFileError, FileNotFoundError)


def test_every_exception_pickles_with_its_type_message_and_fields() -> None:
    import pickle
    e = runtime.exceptions
    for n in sorted(EXCEPTIONS):
        cls = getattr(e, n)
        if issubclass(cls, e.TaskError):
            continue  # rebuilt as a plain TaskError on purpose (covered by its own tests)
        err = cls("what failed; what to do", address="127.0.0.1:1")
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls, n
        assert str(back) == "what failed; what to do", n
        assert back.address == "127.0.0.1:1", n
