"""The current connection: set by ``init``, cleared by ``shutdown``. One small lookup."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.exceptions import NotInitializedError
from runtime.protocol.states import DEFAULT_NAMESPACE

if TYPE_CHECKING:
    from runtime.api._client import CoreClient

_current: CoreClient | None = None

#: Called by ``get`` on a list of refs in the main thread (a notebook's progress bar); set
#: through ``runtime.state.set_get_progress``.
progress_hook: Callable[..., Any] | None = None


def current() -> CoreClient:
    """The connected client, or a clear error when ``init`` was not called."""
    if _current is None:
        raise NotInitializedError("cellray is not initialized: call runtime.init() first "
                                  "(or `%cluster start` in a notebook).")
    return _current


#: Starts (or attaches to) a cluster when none is connected: ``init`` as Ray's calls do on
#: first use. Set by ``runtime.api._core``.
auto_init: Callable[[], Any] | None = None


def connected() -> CoreClient:
    """The connected client; when there is none, a cluster is started (or attached to) first,
    as Ray's ``put``, ``.remote()``, ``get_actor``... do."""
    if _current is None and auto_init is not None:
        auto_init()
    return current()


def namespace_of(client: CoreClient) -> str:
    """The namespace the caller runs in: its task's (inherited from the job that submitted
    it), in an actor its creator's job's (set when the worker became the actor), or the
    driver's own."""
    stack = client.task_stack
    return (stack[-1].namespace if stack and stack[-1].namespace else client.namespace) or DEFAULT_NAMESPACE


def peek() -> CoreClient | None:
    return _current


def set_current(client: CoreClient | None) -> None:
    global _current
    _current = client
