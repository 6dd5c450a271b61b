"""Actors on the driver side: ActorClass (``@remote`` on a class), ActorHandle, ActorMethod."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cloudpickle

from runtime import _ids
from runtime.api import _args, _context, _options, _runtime_env
from runtime.api._generator import ObjectRefGenerator
from runtime.api._object_ref import ObjectRef
from runtime.exceptions import ActorNameTakenError, ActorNotFoundError
from runtime.protocol import codec, node_pb2
from runtime.protocol.states import ActorState


def method(*, num_returns: int = 1) -> Any:
    """Decorate an actor method to set its options, e.g. ``@rt.method(num_returns=2)``."""
    _options.validate({"num_returns": num_returns})

    def wrap(fn: Any) -> Any:
        fn.__cellray_num_returns__ = num_returns
        return fn

    return wrap


def _signatures_of(cls: type, names: Iterable[str]) -> dict[str, inspect.Signature]:
    """The call signature of each method (``self`` left out), for checks at the call site;
    a method whose signature cannot be read is left out (and not checked)."""
    sigs: dict[str, inspect.Signature] = {}
    for name in names:
        attr = inspect.getattr_static(cls, name, None)
        func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            continue
        params = list(sig.parameters.values())
        if not isinstance(attr, staticmethod) and params:
            params = params[1:]  # self, or cls for a classmethod
        sigs[name] = sig.replace(parameters=params)
    return sigs


#: A signature as plain data: each parameter's name, kind (its index in ``_KINDS``) and
#: whether it has a default. What a call-site check needs, small and picklable anywhere
#: (defaults and annotations, which may not pickle, are left out).
Shape = Mapping[str, Sequence[Sequence[Any]]]
_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
          inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.KEYWORD_ONLY,
          inspect.Parameter.VAR_KEYWORD)


def _shape(sigs: Mapping[str, inspect.Signature]) -> dict[str, list[list[Any]]]:
    return {name: [[p.name, _KINDS.index(p.kind), p.default is not p.empty]
                   for p in sig.parameters.values()] for name, sig in sigs.items()}


def _unshape(shape: Shape) -> dict[str, inspect.Signature]:
    """The signatures ``_shape`` described (a default stands in as None: ``bind`` does not
    use it); a malformed entry is left out, and its method not checked."""
    sigs: dict[str, inspect.Signature] = {}
    for name, params in shape.items():
        try:
            sigs[name] = inspect.Signature([
                inspect.Parameter(p, _KINDS[k], default=None if d else inspect.Parameter.empty)
                for p, k, d in params])
        except (TypeError, ValueError, IndexError):
            continue
    return sigs


#: Method signatures of actor classes loaded from the GCS, by function id (``_class_signatures``).
_LOADED: dict[bytes, dict[str, inspect.Signature]] = {}


def _class_signatures(client: Any, function_id: bytes,
                      methods: Iterable[str]) -> dict[str, inspect.Signature]:
    """The method signatures of the actor class exported as ``function_id``, loaded from the
    GCS once per process; ``{}`` when the class does not load here or the GCS does not
    answer at once (that handle's calls are then checked by the actor only)."""
    sigs = _LOADED.get(function_id)
    if sigs is not None:
        return sigs
    try:
        row = client.run(client.gcs.get_function(function_id), client.settings.probe_timeout_s)
    except Exception:  # noqa: BLE001 - no GCS now (or a call from the IO thread): no check
        return {}
    try:
        cls = cloudpickle.loads(row.pickled) if row is not None else None
        sigs = _signatures_of(cls, methods) if isinstance(cls, type) else {}
    except Exception:  # noqa: BLE001 - it needs what this process lacks: the actor checks
        sigs = {}
    _LOADED[function_id] = sigs
    return sigs


def _methods_of(cls: type) -> dict[str, int | str]:
    """Public methods of an actor class and their num_returns ("streaming" for generators)."""
    meta: dict[str, int | str] = {}
    for name in dir(cls):
        if name.startswith("__") and name != "__call__":
            continue
        attr = getattr(cls, name, None)
        # Plain and static methods are functions here; a classmethod is a bound method.
        if inspect.isfunction(attr) or inspect.ismethoddescriptor(attr) or inspect.ismethod(attr):
            gen = inspect.isgeneratorfunction(attr) or inspect.isasyncgenfunction(attr)
            meta[name] = getattr(attr, "__cellray_num_returns__", "streaming" if gen else 1)
    return meta


class ActorClass:
    """A class that runs as an actor: ``Cls.remote(*args)`` creates one and returns a handle.

    ``Cls.options(name=..., namespace=..., lifetime="detached", get_if_exists=True,
    max_restarts=..., max_task_retries=..., max_concurrency=..., num_cpus=..., num_gpus=...,
    resources=...)`` sets options for one creation.
    """

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = _options.validate(dict(options), actor=True)
        self._export: tuple[bytes, bytes] | None = None
        self._methods = _methods_of(cls)
        self._signatures = _signatures_of(cls, self._methods)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actors cannot be instantiated directly. Instead of '{self.__name__}()', "
                        f"use '{self.__name__}.remote()'.")

    def __getattr__(self, name: str) -> Any:
        """The class's own attributes (``Cls.LIMIT``), as on the plain class; methods are
        called on a handle."""
        cls = self.__dict__.get("_cls")
        if cls is None or name.startswith("__"):
            raise AttributeError(name)
        if name in self.__dict__.get("_methods", {}):
            raise AttributeError(f"{self.__name__}.{name} is an actor method: create the actor with "
                                 f"{self.__name__}.remote(), then call handle.{name}.remote(...).")
        try:
            return getattr(cls, name)
        except AttributeError:
            raise AttributeError(f"actor class {self.__name__!r} has no attribute {name!r}") from None

    def options(self, **options: Any) -> ActorClass:
        """A copy of this actor class with ``options`` changed for the next creation."""
        new = ActorClass.__new__(ActorClass)
        new.__dict__.update(self.__dict__)
        new._options = {**self._options, **_options.validate(dict(options), actor=True)}
        return new

    def _exported(self) -> tuple[bytes, bytes]:
        if self._export is None:
            self._export = _options.export(self._cls, f"actor class {self.__name__}")
        return self._export

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Create the actor; returns its handle at once (the constructor runs remotely)."""
        client = _context.connected()
        o = self._options
        try:
            inspect.signature(self._cls).bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.__name__}.remote(): {e}. No actor was created.") from None
        except ValueError:
            pass
        pickled, cid = self._exported()
        client.export_function(cid, self.__name__, pickled)
        actor_id = _ids.new_id()
        name = o.get("name")
        namespace = o.get("namespace") or _context.namespace_of(client)
        anchor = None
        if not name and o.get("lifetime") != "detached":
            # Every handle of the actor, here and wherever it is sent, refers to this object;
            # when nothing does any more, the node ends the actor (after the calls it has).
            anchor_id = _ids.object_id(actor_id, 0)
            anchor = ObjectRef(anchor_id)
            client.put_serialized(anchor_id, codec.serialize(None))
        handle = ActorHandle(actor_id, self.__name__, self._methods, name, namespace, cid, anchor,
                             self._signatures)
        op = node_pb2.ClientOp()
        spec = op.submit
        spec.task_id = _ids.new_id()
        spec.job_id = client.job_id
        spec.function_id = cid
        spec.name = f"{self.__name__}.__init__"
        spec.owner_id = client.client_id
        spec.actor_id = actor_id
        spec.actor_creation = True
        spec.num_returns = 0
        spec.actor_options = json.dumps({
            "class_name": self.__name__, "name": name, "namespace": namespace,
            "max_restarts": o.get("max_restarts") or 0,
            "max_task_retries": o.get("max_task_retries") or 0,
            "max_concurrency": o.get("max_concurrency"), "lifetime": o.get("lifetime"),
        }).encode()
        spec.resources.update(_options.resources_of(o, 0.0))
        _runtime_env.stamp(spec, client, o.get("runtime_env"))
        client.stamp(spec, o.get("scheduling_strategy"))
        spec.namespace = _context.namespace_of(client)
        # Arguments first: one that cannot be sent must not leave a name behind that no
        # actor will ever release.
        keep = _args.encode(client, spec, self.__name__, args, kwargs)
        if name:
            assert client.gcs is not None
            entry = json.dumps({"actor_id": actor_id.hex(), "class_name": self.__name__,
                                "function_id": cid.hex(), "methods": self._methods,
                                "signatures": _shape(self._signatures)}).encode()
            written, existing = client.run(client.gcs.claim_actor_name(namespace, name, entry),
                                           client.settings.rpc_timeout_s)
            if not written:
                if o.get("get_if_exists"):
                    return _handle_from_entry(existing, name, namespace)
                raise ActorNameTakenError(
                    f"An actor named {name!r} already exists in namespace {namespace!r}. Use "
                    f"get_actor({name!r}) to reach it, or options(get_if_exists=True) to reuse it.",
                    name=name, namespace=namespace)
            try:
                client.submit(op)
            except BaseException:
                try:  # release the name: the node never heard of this actor
                    client.run(client.gcs.release_actor_name(namespace, name),
                               client.settings.close_timeout_s)
                except Exception:  # noqa: BLE001 - best effort: the submit's own error is raised next
                    pass
                raise
        else:
            client.submit(op)
        del keep
        return handle

    def __repr__(self) -> str:
        return f"<ActorClass {self.__name__}>"


def _handle_from_entry(raw: bytes, name: str, namespace: str) -> ActorHandle:
    e = json.loads(raw)
    shape = e.get("signatures")  # absent: an entry without them; loaded from the class then
    return ActorHandle(bytes.fromhex(e["actor_id"]), e["class_name"], dict(e["methods"]), name,
                       namespace, bytes.fromhex(e["function_id"]),
                       signatures=_unshape(shape) if isinstance(shape, dict) else None)


class ActorHandle:
    """A reference to an actor: call ``handle.method.remote(...)`` to run a method on it.

    Handles can be passed to tasks and other actors. Calls from one caller run in the order
    they were submitted. An actor that is neither named nor detached ends when its last
    handle anywhere is gone (after the calls already made have run), as in Ray.
    """

    def __init__(self, actor_id: bytes, class_name: str, methods: dict[str, int | str],
                 name: str | None, namespace: str, function_id: bytes,
                 anchor: ObjectRef | None = None,
                 signatures: Mapping[str, inspect.Signature] | None = None) -> None:
        self._actor_id = actor_id
        #: What keeps an unnamed, non-detached actor alive: it ends when no handle holds it.
        self._anchor = anchor
        self._class_name = class_name
        self._methods = methods
        self._name = name
        self._namespace = namespace
        self._function_id = function_id
        #: Method signatures, for checks at the call site: travel with the handle; None when
        #: not known yet (they are loaded from the actor's class at the first call).
        self._signatures = dict(signatures) if signatures is not None else None

    def __getattr__(self, item: str) -> ActorMethod:
        methods = self.__dict__.get("_methods", {})
        if item in methods:
            return ActorMethod(self, item, methods[item])
        raise AttributeError(f"actor class {self.__dict__.get('_class_name')!r} has no method {item!r}")

    def __reduce__(self) -> Any:
        shape = _shape(self._signatures) if self._signatures is not None else None
        return (_rebuild_handle, (self._actor_id, self._class_name, self._methods, self._name,
                                  self._namespace, self._function_id, self._anchor, shape))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    @property
    def actor_id(self) -> str:
        """Hex id of the actor."""
        return self._actor_id.hex()

    def state(self) -> str:
        """The actor's state: PENDING, ALIVE, RESTARTING or DEAD ("UNKNOWN" if unreachable).

        It is the state in the GCS, except that the process that created the actor knows it
        is ALIVE as soon as its constructor returned (its node says so at once), before the
        actor's row reaches the GCS with the node's next report.
        """
        client = _context.peek()
        if client is None or client.gcs is None:
            return "UNKNOWN"
        try:
            row = client.run(client.gcs.get_actor(self._actor_id), client.settings.probe_timeout_s)
        except Exception:  # noqa: BLE001 - a repr must not raise: any failure reads as UNKNOWN
            return "UNKNOWN"
        return known_state(self, row.state if row is not None else None)

    def __repr__(self) -> str:
        name = f", name={self._name!r}" if self._name else ""
        return f"ActorHandle({self._class_name}{name}, id={self._actor_id.hex()[:12]}, state={self.state()})"


def _rebuild_handle(actor_id: bytes, class_name: str, methods: dict[str, int | str],
                    name: str | None, namespace: str, function_id: bytes,
                    anchor: ObjectRef | None, shape: Shape | None) -> ActorHandle:
    """An unpickled handle, with the method signatures it was sent with."""
    return ActorHandle(actor_id, class_name, methods, name, namespace, function_id, anchor,
                       _unshape(shape) if shape is not None else None)


def known_state(handle: ActorHandle, gcs_state: str | None) -> str:
    """The state of ``handle``'s actor, given its GCS row's (None: no row yet): ALIVE rather
    than PENDING once this process knows its constructor returned (it created the actor)."""
    if gcs_state is not None and gcs_state != ActorState.PENDING:
        return gcs_state
    client = _context.peek()
    if client is not None and client.task_events.started(handle._actor_id):
        return ActorState.ALIVE
    return ActorState.PENDING


class ActorMethod:
    """One method of an actor: ``.remote(*args)``, ``.options(num_returns=...)``."""

    def __init__(self, handle: ActorHandle, name: str, num_returns: int | str) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actor methods cannot be called directly. Instead of "
                        f"'{self._name}()', use '{self._name}.remote()'.")

    def options(self, **options: Any) -> ActorMethod:
        """A copy with options for one call (``num_returns``)."""
        unknown = set(options) - {"num_returns", "name"}
        if unknown:
            raise ValueError(f"unknown option(s) for actor methods: {', '.join(sorted(unknown))}; "
                             "valid: num_returns, name")
        _options.validate({"num_returns": options.get("num_returns", self._num_returns)})
        return ActorMethod(self._handle, self._name, options.get("num_returns", self._num_returns))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Call the method on the actor; returns ObjectRef(s) at once.

        Raises ``TypeError`` at once, submitting nothing, when the arguments do not fit the
        method's signature (as a plain call would)."""
        h = self._handle
        sigs = h._signatures
        if sigs is None:  # a handle made without them (``current_actor``): from its class
            sigs = h._signatures = _class_signatures(_context.connected(), h._function_id,
                                                     h._methods)
        sig = sigs.get(self._name)
        if sig is not None:
            try:
                sig.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{h._class_name}.{self._name}.remote(): {e}. "
                                "Nothing was submitted.") from None
        client = _context.connected()
        op = node_pb2.ClientOp()
        spec = op.submit
        task_id = _ids.new_id()
        spec.task_id = task_id
        spec.job_id = client.job_id
        spec.function_id = h._function_id
        spec.name = f"{h._class_name}.{self._name}"
        spec.owner_id = client.client_id
        spec.actor_id = h._actor_id
        spec.method = self._name
        streaming = self._num_returns == "streaming"
        spec.num_returns, spec.streaming = 0 if streaming else int(self._num_returns), streaming
        refs = _args.submit(client, op, spec.name, args, kwargs)
        return ObjectRefGenerator(client, task_id) if streaming else refs


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor named ``name``, in ``namespace`` (default: the caller's
    job's namespace, ``init(namespace=...)``, or an anonymous one of its own).

    Raises ``ActorNotFoundError`` (a ``ValueError``, as in Ray) when no such actor exists.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() needs a non-empty actor name, got {name!r}")
    client = _context.connected()
    namespace = namespace or _context.namespace_of(client)
    assert client.gcs is not None
    raw = client.run(client.gcs.lookup_actor_name(namespace, name), client.settings.rpc_timeout_s)
    if not raw:
        raise ActorNotFoundError(
            f"Failed to look up actor with name {name!r} in namespace {namespace!r}: no such "
            "actor (it was never created, or it died). Check the name and namespace, or create "
            "it with options(name=...).", name=name, namespace=namespace)
    return _handle_from_entry(raw, name, namespace)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor's process at once. Later calls raise ``ActorDiedError``.

    With ``no_restart=False`` the actor restarts if its ``max_restarts`` allows.
    """
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() expects an ActorHandle, got {type(actor).__name__}")
    client = _context.connected()
    op = node_pb2.ClientOp()
    op.kill_actor.actor_id = actor._actor_id
    op.kill_actor.no_restart = no_restart
    client.submit(op)
