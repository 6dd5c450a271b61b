"""cellray's runtime: Ray's task and object API on a cluster you start from a notebook.

Use it as Ray::

    import runtime as rt
    rt.init(num_cpus=2)                  # a local cluster: GCS, node manager, workers
    @rt.remote
    def f(x):
        return x + 1
    rt.get([f.remote(i) for i in range(10)])
    rt.shutdown()

How the package is built: ``api`` is the driver side (a core client with one IO thread
and one batched stream to the node); ``gcs`` is the Global Control Store; ``node`` the
node manager (local scheduler, object store, worker pool); ``worker`` the task executor;
``protocol`` the wire format; ``cluster`` starts processes. Only the names below are public.
"""

from __future__ import annotations

import inspect
from typing import Any as _Any

from runtime import exceptions, state
from runtime.api._actor import ActorClass, ActorHandle, get_actor, kill, method
from runtime.api._core import (
    ClusterInfo,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_gpu_ids,
    init,
    is_initialized,
    nodes,
    put,
    shutdown,
    wait,
)
from runtime.api._generator import ObjectRefGenerator
from runtime.api._object_ref import ObjectRef
from runtime.api._remote_function import RemoteFunction
from runtime.api._runtime_context import RuntimeContext, get_runtime_context
from runtime.state._timeline import timeline

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ClusterInfo",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "RuntimeContext",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "state",
    "timeline",
    "wait",
]

__version__ = "0.1.0"


def _make_remote(obj: _Any, options: dict[str, _Any]) -> _Any:
    if inspect.isclass(obj):
        return ActorClass(obj, options)
    if not callable(obj):
        raise TypeError(f"@remote expects a function, got {type(obj).__name__}")
    return RemoteFunction(obj, options)


def remote(*args: _Any, **options: _Any) -> _Any:
    """Make a function a remote task, or a class an actor: ``@remote`` or ``@remote(...)``.

    Task options: num_cpus (default 1), num_gpus, resources (dict of custom resources),
    num_returns (default 1), max_retries (default 3; re-runs when the worker dies),
    retry_exceptions (True or a list of exception classes), name.

    Actor options: num_cpus (default 0), num_gpus, resources, max_restarts,
    max_task_retries, max_concurrency, name, namespace, lifetime ("detached"),
    get_if_exists.

    Both take ``runtime_env``, a dict of: ``working_dir`` (a local directory: the worker's
    current directory and first on ``sys.path``, so ``import mymodule`` and relative
    file reads work), ``py_modules`` (package directories, ``.py`` files or imported
    modules put on ``sys.path``), ``env_vars`` (``{str: str}`` set before any of your
    code runs; ``"${NAME}"`` is the node's own NAME) and ``excludes`` (gitignore
    patterns left out of the packages). Directories are zipped once, named by a hash of
    their content (at most 100 MiB each; ``.git`` and ``__pycache__`` always left out),
    stored in the cluster and unpacked on every node that needs them. The env is merged,
    as in Ray, into the caller's (``init(runtime_env=...)``, or the env of the task that
    submits): ``working_dir`` and ``py_modules`` replace, ``env_vars`` add. Workers are
    kept apart per env. Other Ray keys (``pip``, ``conda``, ...) raise ``ValueError``; a
    bad path raises ``FileNotFoundError``/``NotADirectoryError`` at ``.remote()``.

    Examples
    --------
    >>> @rt.remote
    ... def square(x):
    ...     return x * x
    >>> rt.get(square.remote(4))       # doctest: +SKIP
    16
    >>> @rt.remote(runtime_env={"working_dir": ".", "env_vars": {"OMP_NUM_THREADS": "1"}})
    ... def uses_local_code():
    ...     import mymodule            # a file of the notebook's directory
    ...     return mymodule.run()
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("@remote takes either no arguments (@remote) or only keyword options, "
                        "e.g. @remote(num_cpus=2)")
    if not options:
        raise TypeError("@remote() with empty parentheses is not allowed (as in Ray): write "
                        "@remote without parentheses, or give options, e.g. @remote(num_cpus=2)")
    return lambda obj: _make_remote(obj, options)
