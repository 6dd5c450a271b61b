"""Wait for a condition on a monotonic deadline, never for a fixed time.

A test says what it waits for, so that a timeout explains itself::

    wait_for(lambda: handle.alive(), what="the node manager to come up")
    await async_wait_for(lambda: len(events) >= 3, timeout=5, what="3 scheduler events")

On timeout both raise ``WaitTimeoutError`` (an ``AssertionError``, so pytest shows it as
a failed expectation, and a ``TimeoutError``), whose message names the condition, the
timeout and the last value the predicate returned. An exception raised by the predicate
is not swallowed: it propagates at once, because retrying past a bug only hides it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

#: Longest repr of the last value that goes into a timeout message.
_MAX_REPR = 500


class WaitTimeoutError(AssertionError, TimeoutError):
    """A ``wait_for`` condition did not hold before its deadline.

    Attributes
    ----------
    what
        The condition, as the caller described it.
    timeout
        Seconds waited.
    last
        The last value the predicate returned (falsy).
    """

    def __init__(self, what: str, timeout: float, last: object) -> None:
        super().__init__(what, timeout, last)
        self.what = what
        self.timeout = timeout
        self.last = last

    def __str__(self) -> str:
        last = repr(self.last)
        if len(last) > _MAX_REPR:
            last = last[:_MAX_REPR] + "...(truncated)"
        return (f"timed out after {self.timeout:g} s waiting for {self.what} "
                f"(last value: {last})")

    def __reduce__(self) -> tuple[type[WaitTimeoutError], tuple[str, float, object]]:
        return type(self), (self.what, self.timeout, self.last)


def _check_args(timeout: float, interval: float, what: str) -> None:
    if not what:
        raise ValueError("wait_for needs `what=`: a description of the condition, for the timeout message")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout}")
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval}")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, *, what: str,
             interval: float = 0.01) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a truthy value.

    Parameters
    ----------
    predicate
        A callable without arguments; its first truthy result is returned.
    timeout
        Seconds before giving up, measured on ``time.monotonic``. The predicate is always
        called at least once, and once more at the deadline.
    what
        What is being waited for ("the GCS to list 2 nodes"); goes into the error.
    interval
        Seconds between calls.

    Raises
    ------
    WaitTimeoutError
        When the deadline passes; the message names ``what`` and the last value.
    Exception
        Whatever the predicate raises, at once.

    Examples
    --------
    >>> wait_for(lambda: 42, what="the answer")
    42
    """
    _check_args(timeout, interval, what)
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(what, timeout, last)
        time.sleep(min(interval, remaining))


@overload
async def async_wait_for(predicate: Callable[[], Awaitable[T]], timeout: float = 10.0, *,
                         what: str, interval: float = 0.01) -> T: ...


@overload
async def async_wait_for(predicate: Callable[[], T], timeout: float = 10.0, *,
                         what: str, interval: float = 0.01) -> T: ...


async def async_wait_for(predicate: Callable[[], Any], timeout: float = 10.0, *,
                         what: str, interval: float = 0.01) -> Any:
    """Like ``wait_for``, but sleeps with ``asyncio.sleep``; ``predicate`` may be async.

    A predicate that returns an awaitable (an ``async def`` function, say) is awaited on
    every call. The deadline bounds the time between calls, not a single call that never
    returns: wrap such a call in ``asyncio.timeout`` yourself.

    Examples
    --------
    >>> import asyncio
    >>> asyncio.run(async_wait_for(lambda: "ok", what="a truthy value"))
    'ok'
    """
    _check_args(timeout, interval, what)
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        last = await result if inspect.isawaitable(result) else result
        if last:
            return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(what, timeout, last)
        await asyncio.sleep(min(interval, remaining))
