"""Validation of ``@remote(...)`` and ``.options(...)`` arguments, shared by tasks and actors."""

from __future__ import annotations

import inspect
import pickle
import warnings
from typing import Any

from runtime.api import _runtime_env, _strategy
from runtime.protocol import codec
from runtime.protocol.states import Lifetime

#: The values of the ``lifetime`` option, as strings (the wire form).
LIFETIMES: tuple[str, ...] = tuple(member.value for member in Lifetime)

TASK_OPTIONS = {"num_cpus", "num_gpus", "resources", "num_returns", "max_retries",
                "retry_exceptions", "name", "memory", "scheduling_strategy", "runtime_env",
                "max_calls"}
ACTOR_OPTIONS = {"num_cpus", "num_gpus", "resources", "max_restarts", "max_task_retries",
                 "max_concurrency", "name", "namespace", "lifetime", "get_if_exists", "memory",
                 "scheduling_strategy", "runtime_env"}


def _number(name: str, value: Any, *, low: float = 0, integer: bool = False,
            allow_neg_one: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise TypeError(f"option {name} must be {kind}, got {value!r}")
    if allow_neg_one and value == -1:
        return
    if value < low:
        extra = " or -1 (forever)" if allow_neg_one else ""
        raise ValueError(f"option {name} must be >= {low}{extra}, got {value!r}")


def validate(options: dict[str, Any], *, actor: bool = False) -> dict[str, Any]:
    """Check option names and values; return them unchanged. Raises TypeError/ValueError."""
    allowed = ACTOR_OPTIONS if actor else TASK_OPTIONS
    unknown = set(options) - allowed
    if unknown:
        what = "actors" if actor else "tasks"
        raise ValueError(f"unknown option(s) for {what}: {', '.join(sorted(unknown))}. "
                         f"Valid options: {', '.join(sorted(allowed))}")
    for key in ("num_cpus", "num_gpus", "memory"):
        if options.get(key) is not None:
            _number(key, options[key])
    gpus = options.get("num_gpus")
    if gpus is not None and gpus > 1 and gpus != int(gpus):
        raise ValueError(f"num_gpus above 1 must be a whole number, got {gpus!r}")
    res = options.get("resources")
    if res is not None:
        if not isinstance(res, dict):
            raise TypeError(f"option resources must be a dict of name -> amount, got {res!r}")
        for k, v in res.items():
            if k in ("CPU", "GPU", "memory"):
                raise ValueError("use num_cpus, num_gpus and memory instead of 'CPU', 'GPU' and "
                                 "'memory' in resources")
            if not isinstance(k, str):
                raise TypeError(f"resource names must be strings, got {k!r}")
            _number(f"resources[{k!r}]", v)
    if options.get("num_returns") not in (None, "streaming"):
        _number("num_returns", options["num_returns"], integer=True)
    if options.get("max_calls") is not None:
        _number("max_calls", options["max_calls"], integer=True)
    for key in ("max_retries", "max_restarts", "max_task_retries"):
        if options.get(key) is not None:
            _number(key, options[key], integer=True, allow_neg_one=True)
    if options.get("max_concurrency") is not None:
        _number("max_concurrency", options["max_concurrency"], low=1, integer=True)
    re = options.get("retry_exceptions")
    if re is not None and not isinstance(re, bool) and not (
            isinstance(re, (list, tuple))
            and all(isinstance(t, type) and issubclass(t, BaseException) for t in re)):
        raise TypeError("retry_exceptions must be True, False or a list of exception classes")
    if "scheduling_strategy" in options:
        _strategy.check(options["scheduling_strategy"])
    _runtime_env.check(options.get("runtime_env"))
    lifetime = options.get("lifetime")
    if lifetime is not None and lifetime not in LIFETIMES:
        raise ValueError(f"lifetime must be {' or '.join(map(repr, LIFETIMES))}, got {lifetime!r}")
    for key in ("name", "namespace"):
        v = options.get(key)
        if v is not None and not isinstance(v, str):
            raise TypeError(f"option {key} must be a string, got {v!r}")
    return options


def resources_of(options: dict[str, Any], default_cpus: float) -> dict[str, float]:
    """The resource request a task or actor makes."""
    res: dict[str, float] = {}
    cpus = options.get("num_cpus")
    cpus = default_cpus if cpus is None else cpus
    if cpus:
        res["CPU"] = float(cpus)
    gpus = options.get("num_gpus")
    if gpus:
        res["GPU"] = float(gpus)
    memory = options.get("memory")
    if memory:
        res["memory"] = float(memory)  # bytes, as in Ray: nodes offer their RAM less the store
    for k, v in (options.get("resources") or {}).items():
        if v:
            res[k] = float(v)
    return res


def export(obj: Any, what: str, hint: str = "") -> tuple[bytes, bytes]:
    """Pickle a function or class by value for export: ``(pickled, content id)``.

    Raises ``TypeError`` naming ``what`` when it cannot be pickled, and ``ValueError`` when
    it is over ``EXPORT_LIMIT`` bytes (it captures a large object; the error names it); warns
    above ``EXPORT_WARN``.
    """
    try:
        pickled = codec.serialize_function(obj)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(f"{what} cannot be sent to the cluster: pickling it failed ({e}).{hint}") from e
    size = len(pickled[0])
    if size > EXPORT_WARN:
        name, captured = _largest_capture(obj)
        culprit = (f"; the largest thing it captures is {name!r} ({captured / 2**20:.1f} MiB)"
                   if name else "")
        msg = (f"{what} pickles to {size / 2**20:.1f} MiB{culprit}. A function or class is sent "
               "to every worker that runs it: pass large values as arguments (or rt.put them "
               "and pass the ref) instead of capturing them.")
        if size > EXPORT_LIMIT:
            raise ValueError(f"{msg} The limit is {EXPORT_LIMIT // 2**20} MiB.")
        warnings.warn(msg, stacklevel=4)
    return pickled


#: The most a function or class may pickle to (as Ray's FUNCTION_SIZE_ERROR_THRESHOLD).
EXPORT_LIMIT = 100 * 2**20
#: Above this, exporting warns.
EXPORT_WARN = 10 * 2**20


def _largest_capture(obj: Any) -> tuple[str, int]:
    """The name and pickled size of the largest value ``obj`` captures: its closure cells
    and the globals its code names (for a class, those of its methods and its attributes)."""
    found: dict[str, Any] = {}

    def scan(fn: Any) -> None:
        code = getattr(fn, "__code__", None)
        if code is None:
            return
        for var, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or (), strict=False):
            try:
                found[var] = cell.cell_contents
            except ValueError:  # an empty cell
                pass
        names = set(code.co_names)
        for const in code.co_consts:
            if hasattr(const, "co_names"):
                names.update(const.co_names)
        env = getattr(fn, "__globals__", {})
        found.update({n: env[n] for n in names if n in env})

    if isinstance(obj, type):
        for key, value in vars(obj).items():
            if callable(value):
                scan(value)
            elif not key.startswith("__"):
                found[f"{obj.__name__}.{key}"] = value
    else:
        scan(obj)
    best, best_size = "", 0
    for name, value in found.items():
        if inspect.ismodule(value) or callable(value):
            continue
        try:
            size = len(codec.serialize_function(value)[0])
        except Exception:  # noqa: BLE001 - what cannot be measured is not the culprit named
            continue
        if size > best_size:
            best, best_size = name, size
    return best, best_size
