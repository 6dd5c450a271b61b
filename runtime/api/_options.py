"""Validation of ``@remote(...)`` and ``.options(...)`` arguments, shared by tasks and actors."""

from __future__ import annotations

import pickle
from typing import Any

from runtime.api import _strategy
from runtime.protocol import codec
from runtime.protocol.states import Lifetime

#: The values of the ``lifetime`` option, as strings (the wire form).
LIFETIMES: tuple[str, ...] = tuple(member.value for member in Lifetime)

TASK_OPTIONS = {"num_cpus", "num_gpus", "resources", "num_returns", "max_retries",
                "retry_exceptions", "name", "memory", "scheduling_strategy", "runtime_env"}
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
            if k in ("CPU", "GPU"):
                raise ValueError("use num_cpus and num_gpus instead of 'CPU' and 'GPU' in resources")
            if not isinstance(k, str):
                raise TypeError(f"resource names must be strings, got {k!r}")
            _number(f"resources[{k!r}]", v)
    if options.get("num_returns") is not None:
        _number("num_returns", options["num_returns"], integer=True)
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
    for k, v in (options.get("resources") or {}).items():
        if v:
            res[k] = float(v)
    return res


def export(obj: Any, what: str, hint: str = "") -> tuple[bytes, bytes]:
    """Pickle a function or class by value for export: ``(pickled, content id)``.

    Raises ``TypeError`` naming ``what`` when it cannot be pickled.
    """
    try:
        return codec.serialize_function(obj)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(f"{what} cannot be sent to the cluster: pickling it failed ({e}).{hint}") from e
