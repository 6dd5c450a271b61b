"""wait_for / async_wait_for: a deadline on a monotonic clock, and a message that explains."""

from __future__ import annotations

import asyncio
import itertools
import pickle

import pytest

from runtime.testing import WaitTimeoutError, async_wait_for, wait_for


def test_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_for(lambda: next(counter) >= 3 and "done", timeout=5, what="three polls") == "done"


def test_timeout_names_the_condition_and_the_last_value() -> None:
    values = iter(range(1_000_000))
    with pytest.raises(WaitTimeoutError) as info:
        wait_for(lambda: next(values) < 0 and "never", timeout=0.05,
                 what="the counter to go negative")
    message = str(info.value)
    assert "the counter to go negative" in message
    assert "0.05 s" in message
    assert "last value: False" in message
    # It is both a failed expectation and a timeout, for whichever the caller catches.
    assert isinstance(info.value, AssertionError)
    assert isinstance(info.value, TimeoutError)


def test_timeout_reports_what_the_predicate_returned() -> None:
    alive = {"n-1": True, "n-2": False}
    with pytest.raises(TimeoutError, match=r"waiting for n-2 to be alive \(last value: \[\]\)"):
        wait_for(lambda: [n for n, up in alive.items() if up and n == "n-2"], timeout=0.02,
                 what="n-2 to be alive")


def test_zero_timeout_polls_once() -> None:
    calls = []
    with pytest.raises(WaitTimeoutError):
        wait_for(lambda: calls.append(1), timeout=0, what="nothing")
    assert len(calls) == 1


def test_predicate_errors_propagate_at_once() -> None:
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise KeyError("no such node")

    with pytest.raises(KeyError):
        wait_for(broken, timeout=10, what="a broken predicate")
    assert len(calls) == 1


def test_what_is_required() -> None:
    with pytest.raises(ValueError, match="what="):
        wait_for(lambda: True, what="")


def test_long_last_values_are_truncated_and_the_error_pickles() -> None:
    err = WaitTimeoutError("a big list", 1.0, [0] * 10_000)
    assert len(str(err)) < 700
    again = pickle.loads(pickle.dumps(err))
    assert (again.what, again.timeout, again.last) == ("a big list", 1.0, [0] * 10_000)


def test_async_with_a_sync_predicate() -> None:
    counter = itertools.count()
    result = asyncio.run(async_wait_for(lambda: next(counter) == 2, timeout=5, what="2 polls"))
    assert result is True


def test_async_with_an_async_predicate() -> None:
    state = {"n": 0}

    async def ready() -> int:
        state["n"] += 1
        return state["n"] if state["n"] >= 3 else 0

    assert asyncio.run(async_wait_for(ready, timeout=5, what="3 polls")) == 3


def test_async_timeout_names_the_condition() -> None:
    async def never() -> list[str]:
        return []

    with pytest.raises(WaitTimeoutError, match=r"waiting for the actor to restart \(last value: \[\]\)"):
        asyncio.run(async_wait_for(never, timeout=0.05, what="the actor to restart"))
