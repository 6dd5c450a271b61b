"""``ActorPool``: spread work over a fixed set of actors, as Ray's ``ray.util.ActorPool``.

Each submitted value goes to an idle actor through a function ``fn(actor, value)`` that
returns an ObjectRef (e.g. ``lambda a, v: a.work.remote(v)``); when every actor is busy,
values wait in the pool and go out as actors come back. Results come back in submission
order (``get_next``, ``map``) or as they finish (``get_next_unordered``, ``map_unordered``).
An actor comes back to the pool when its result is taken.

Examples
--------
>>> import runtime as rt
>>> from runtime.util import ActorPool
>>> @rt.remote
... class Doubler:
...     def double(self, x):
...         return 2 * x
>>> pool = ActorPool([Doubler.remote(), Doubler.remote()])        # doctest: +SKIP
>>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4]))  # doctest: +SKIP
[2, 4, 6, 8]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import runtime as rt
from runtime.exceptions import ActorDiedError

__all__ = ["ActorPool"]

#: ``fn(actor, value)``: start the work of ``value`` on ``actor``, return its ObjectRef.
Submit = Callable[[Any, Any], Any]


def _first(ref: Any) -> Any:
    """The ref to wait on for ``fn``'s answer: itself, or the first of several returns."""
    return ref[0] if isinstance(ref, (list, tuple)) else ref


class ActorPool:
    """A pool of actors that work through submitted values (see the module docstring).

    Parameters
    ----------
    actors
        The actors to use (handles). More can be added later with ``push``.
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle: list[Any] = list(actors)
        #: In flight, by submission number: (ref, actor).
        self._running: dict[int, tuple[Any, Any]] = {}
        #: Values waiting for an idle actor, oldest first.
        self._waiting: deque[tuple[Submit, Any]] = deque()
        self._submitted = 0  # submission numbers given out
        #: The next number get_next returns: one past the highest taken (in order or not).
        self._returned = 0

    # ---- submitting ----------------------------------------------------------------

    def submit(self, fn: Submit, value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or when one is free.

        Examples
        --------
        >>> pool.submit(lambda a, v: a.double.remote(v), 1)   # doctest: +SKIP
        >>> pool.get_next()                                     # doctest: +SKIP
        2
        """
        if not self._idle:
            self._waiting.append((fn, value))
            return
        actor = self._idle.pop()
        self._running[self._submitted] = (fn(actor, value), actor)
        self._submitted += 1

    def map(self, fn: Submit, values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` to each of ``values`` across the pool; yield results in order.

        Results of earlier submissions not taken yet are discarded first, as in Ray.
        """
        self._drain()
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next)

    def map_unordered(self, fn: Submit, values: Iterable[Any]) -> Iterator[Any]:
        """Like ``map``, yielding each result as soon as it is ready."""
        self._drain()
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next_unordered)

    def _results(self, take: Callable[[], Any]) -> Iterator[Any]:
        while self.has_next():
            yield take()

    def _drain(self) -> None:
        """Take (and drop) every result still owed, so a new map starts clean."""
        while self.has_next():
            try:
                self.get_next_unordered()
            except Exception:  # noqa: BLE001 - an old submission's error is not the new map's
                pass

    # ---- taking results ------------------------------------------------------------

    def has_next(self) -> bool:
        """True while a submitted value's result has not been taken."""
        return bool(self._running)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of the oldest submission not taken yet (blocks for it).

        Raises ``StopIteration`` when nothing is owed, ``TimeoutError`` when ``timeout``
        seconds pass first (with ``ignore_if_timedout`` that submission is then dropped,
        its actor back in the pool), and whatever the work raised. Raises ``ValueError``
        when ``get_next_unordered`` already took the latest submission (as Ray does).
        """
        if not self.has_next():
            raise StopIteration("No more results to get: submit work first.")
        if self._returned >= self._submitted:
            # As in Ray: get_next_unordered took a later submission than any still owed, so
            # "the next in order" is gone; what was submitted after it is fine to take.
            raise ValueError("get_next() cannot continue after get_next_unordered() took the "
                             "latest submission; take the rest with get_next_unordered(), or "
                             "submit more first.")
        index = self._returned
        ref, _ = self._running[index]
        if timeout is not None:
            ready, _ = rt.wait([_first(ref)], num_returns=1, timeout=timeout)
            if not ready:
                if not ignore_if_timedout:
                    raise TimeoutError(f"Timed out after {timeout} s waiting for result {index}.")
                self._take(index)
                raise TimeoutError(f"Timed out after {timeout} s waiting for result {index}; "
                                   "it was dropped and its actor returned to the pool.")
        return self._finish(index)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of any submission that is ready (blocks for the first).

        Raises like ``get_next``; with ``ignore_if_timedout`` nothing is dropped (there is no
        one submission to drop), the timeout is raised all the same.
        """
        if not self.has_next():
            raise StopIteration("No more results to get: submit work first.")
        by_ref = {_first(ref).hex(): i for i, (ref, _) in self._running.items()}
        ready, _ = rt.wait([_first(ref) for ref, _ in self._running.values()], num_returns=1,
                           timeout=timeout)
        if not ready:
            raise TimeoutError(f"Timed out after {timeout} s waiting for any result.")
        return self._finish(by_ref[ready[0].hex()])

    def _finish(self, index: int) -> Any:
        """The value of submission ``index``; its actor is free again, unless it died (as in
        Ray, a dead actor leaves the pool instead of failing every value given to it)."""
        ref, actor = self._running.pop(index)
        self._returned = max(self._returned, index + 1)
        try:
            value = rt.get(ref)
        except BaseException as e:
            if not isinstance(e, ActorDiedError):
                self._give_back(actor)
            raise
        self._give_back(actor)
        return value

    def _take(self, index: int) -> None:
        """Submission ``index`` is taken: its actor is free again (and may start a waiting one)."""
        _, actor = self._running.pop(index)
        self._returned = max(self._returned, index + 1)
        self._give_back(actor)

    def _give_back(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._waiting:
            self.submit(*self._waiting.popleft())

    # ---- the actors ----------------------------------------------------------------

    def has_free(self) -> bool:
        """True when an actor is idle and no value waits for one."""
        return bool(self._idle) and not self._waiting

    def pop_idle(self) -> Any | None:
        """Take an idle actor out of the pool (None when none is free)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add ``actor`` to the pool (it starts a waiting value, if any).

        Raises ``ValueError`` when it is in the pool already.
        """
        if any(a is actor for a in self._idle) or any(a is actor for _, a in self._running.values()):
            raise ValueError("This actor already belongs to the pool.")
        self._give_back(actor)
