"""Where a new task comes from and where it may run: ``stamp``, for ``CoreClient.stamp``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from runtime.api import _strategy
from runtime.protocol import common_pb2

logger = logging.getLogger(__name__)

__all__ = ["stamp"]


def stamp(spec: common_pb2.TaskSpec, strategy: Any, stack: tuple[common_pb2.TaskSpec, ...],
          client_id: bytes, node_address: str, origin: Callable[[], str] | None) -> None:
    """Fill where ``spec`` comes from and where it may run.

    Inside a task (``stack``, innermost last) it inherits its parent's driver and origin;
    from a driver it gets the driver (``client_id`` on ``node_address``) and the origin tag
    ``origin()`` names (a notebook cell). ``strategy`` (checked already) says where it may
    run; a method call of an actor takes none.
    """
    if not spec.actor_id or spec.actor_creation:
        _strategy.apply(spec, strategy, stack[-1] if stack else None)
    if stack:
        parent = stack[-1]
        spec.parent_task_id = parent.task_id
        spec.driver_id = parent.driver_id
        spec.driver_address = parent.driver_address
        spec.origin = parent.origin
        return
    spec.driver_id = client_id
    spec.driver_address = node_address
    if origin is not None:
        try:
            spec.origin = origin()
        except Exception:  # a user's provider must not fail the submit
            logger.exception("origin provider failed")
