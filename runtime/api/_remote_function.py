"""RemoteFunction: what ``@remote`` makes of a function."""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from runtime import _ids
from runtime.api import _args, _context, _options, _runtime_env
from runtime.api._generator import ObjectRefGenerator
from runtime.protocol import codec, common_pb2, node_pb2

if TYPE_CHECKING:
    from runtime.api._client import CoreClient

P = ParamSpec("P")
R = TypeVar("R")

DEFAULTS: dict[str, Any] = {"num_cpus": 1, "num_returns": None, "max_retries": 3,
                            "retry_exceptions": False}


class RemoteFunction(Generic[P, R]):
    """A function that runs as a task on the cluster: call ``.remote(*args, **kwargs)``.

    ``.remote`` returns an ObjectRef at once (a list of them when ``num_returns > 1``,
    None when it is 0). ``.options(...)`` returns a copy with other options for one call:
    num_cpus, num_gpus, resources, num_returns, max_retries, retry_exceptions, name,
    runtime_env (see ``runtime.remote``).
    """

    def __init__(self, fn: Any, options: dict[str, Any]) -> None:
        self._fn = fn
        self._options = {**DEFAULTS, **_options.validate(options)}
        self._name: str = str(options.get("name") or getattr(fn, "__qualname__",
                                                            getattr(fn, "__name__", "task")))
        self._export: tuple[bytes, bytes] | None = None  # (pickled, function id)
        self._template: common_pb2.TaskSpec | None = None
        self._template_for: tuple[bytes, bytes] | None = None
        self._signature: inspect.Signature | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Remote functions cannot be called directly. Instead of running "
                        f"'{self._name}()', try '{self._name}.remote()'.")

    def options(self, **options: Any) -> RemoteFunction[P, R]:
        """A copy of this remote function with ``options`` changed (see the class docstring)."""
        new = RemoteFunction.__new__(RemoteFunction)
        new.__dict__.update(self.__dict__)
        new._options = {**self._options, **_options.validate(options)}
        if options.get("name"):
            new._name = str(options["name"])
        new._template = None
        return new

    def _exported(self) -> tuple[bytes, bytes]:
        if self._export is None:
            self._export = _options.export(
                self._fn, self._name, " A remote function must not capture unpicklable objects "
                "(locks, open files, sockets) from its enclosing scope.")
        return self._export

    def _spec_template(self, client: CoreClient) -> common_pb2.TaskSpec:
        key = (client.client_id, client.job_id)
        if self._template is None or self._template_for != key:
            pickled, fid = self._exported()
            client.export_function(fid, self._name, pickled)
            o = self._options
            returns = o["num_returns"]
            if returns is None:  # as Ray: a generator streams its items, a function returns one
                gen = inspect.isgeneratorfunction(self._fn) or inspect.isasyncgenfunction(self._fn)
                returns = "streaming" if gen else 1
            t = common_pb2.TaskSpec(function_id=fid, name=self._name, job_id=client.job_id,
                                    num_returns=0 if returns == "streaming" else returns,
                                    streaming=returns == "streaming",
                                    max_retries=o["max_retries"], owner_id=client.client_id)
            t.resources.update(_options.resources_of(o, 1.0))
            t.max_calls = o.get("max_calls") or 0
            re = o["retry_exceptions"]
            t.retry_exceptions = bool(re)
            if isinstance(re, (list, tuple)):
                t.retry_exception_types = codec.serialize_function(tuple(re))[0]
            _runtime_env.stamp(t, client, o.get("runtime_env"))
            self._template, self._template_for = t, key
        return self._template

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Submit a task; return its ObjectRef(s) at once."""
        client = _context.connected()
        if self._signature is None:
            try:
                self._signature = inspect.signature(self._fn)
            except (TypeError, ValueError):
                self._signature = inspect.Signature()
        if self._signature.parameters:
            try:
                self._signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{self._name}.remote(): {e}. Nothing was submitted.") from None
        template = self._spec_template(client)
        op = node_pb2.ClientOp()
        spec = op.submit
        spec.CopyFrom(template)
        task_id = _ids.new_id()
        spec.task_id = task_id
        refs = _args.submit(client, op, self._name, args, kwargs, self._options.get("scheduling_strategy"))
        return ObjectRefGenerator(client, task_id) if spec.streaming else refs

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._name}>"
