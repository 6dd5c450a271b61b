"""Actor helpers laid out as Ray's ``ray.actor``: ``exit_actor()``."""

from __future__ import annotations

from typing import NoReturn

from runtime.api import _context

__all__ = ["exit_actor"]


class ActorExit(SystemExit):
    """Raised by ``exit_actor()`` inside an actor's method; its worker ends the actor."""


def exit_actor() -> NoReturn:
    """End the current actor from inside one of its methods, for good (it is not restarted,
    whatever its ``max_restarts``).

    The calling method does not return normally: ``get`` of its result raises
    ``ActorDiedError`` saying the actor exited, as do calls made to the actor afterwards.
    Calls submitted before it ran first (an actor runs each caller's calls in order).

    Raises ``TypeError`` outside an actor (a driver, a task).

    Examples
    --------
    >>> import runtime as rt
    >>> from runtime.actor import exit_actor
    >>> @rt.remote
    ... class Job:
    ...     def finish(self):
    ...         exit_actor()
    """
    client = _context.peek()
    stack = client.task_stack if client is not None else ()
    if not stack or not stack[-1].actor_id:
        raise TypeError("exit_actor() can only be called from an actor's method (or constructor); "
                        "to stop an actor from outside, use runtime.kill(handle).")
    raise ActorExit(0)
