"""The errors ``get`` and ``wait`` raise, shown from the caller's frames.

An error of the cluster reaches ``get`` through cellray's client, object table and, in a
notebook, the progress bar's widgets (with ``threading.py`` under them). Python would
print all of those frames between the user's call and the error; ``callers_frames_only``
cuts them (``runtime._tracebacks`` decides which frames are cellray's).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from runtime import _tracebacks
from runtime.exceptions import ClusterError, InternalError

_Call = TypeVar("_Call", bound=Callable[..., Any])


def callers_frames_only(call: _Call) -> _Call:
    """Decorate a blocking public call (``get``, ``wait``): the errors of the cluster it
    raises (``ClusterError``, and ``KeyboardInterrupt`` while it waits) show the caller's
    frames, then the call's one line, and no frame of cellray under it (IPython and pytest
    skip that line too). ``CELLRAY_TRACEBACK=full`` and ``InternalError`` (a cellray bug,
    whose frames say where) keep every frame.
    """
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except (ClusterError, KeyboardInterrupt) as error:
            __tracebackhide__ = not (_tracebacks.full() or isinstance(error, InternalError))
            if __tracebackhide__:
                error.with_traceback(_tracebacks.trimmed(error.__traceback__))
            # The error of the call, its traceback: the caller's frames, then this line.
            raise error

    # Named like the call it wraps, so that a traceback's line reads "in get".
    wrapper.__code__ = wrapper.__code__.replace(co_name=call.__name__, co_qualname=call.__qualname__)
    return cast(_Call, functools.wraps(call)(wrapper))
