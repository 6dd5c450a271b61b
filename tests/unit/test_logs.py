"""The daemons' log rate limit: a flood of one kind of warning is cut to a count, one
traceback per kind (issue 17, point 4)."""

from __future__ import annotations

import logging
import sys

from runtime._logs import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _records(limit: RateLimit, n: int, msg: str = "bad request from %s",
             exc: bool = False) -> list[logging.LogRecord]:
    passed = []
    for i in range(n):
        exc_info = None
        if exc:
            try:
                raise ValueError(i)
            except ValueError:
                exc_info = sys.exc_info()
        record = logging.LogRecord("runtime.gcs", logging.WARNING, __file__, 1, msg, (i,), exc_info)
        if limit.filter(record):
            passed.append(record)
    return passed


def test_a_flood_of_one_kind_is_cut_to_the_limit_then_counted() -> None:
    clock = Clock()
    limit = RateLimit(per_minute=5, clock=clock)
    assert len(_records(limit, 100)) == 5
    clock.now = 61
    [first, *rest] = _records(limit, 3)
    assert "95 more like this were not logged in the last minute" in first.getMessage()
    assert len(rest) == 2


def test_other_kinds_and_info_lines_are_not_held_back() -> None:
    limit = RateLimit(per_minute=1)
    assert len(_records(limit, 3, "one kind %s")) == 1
    assert len(_records(limit, 3, "another kind %s")) == 1
    info = logging.LogRecord("runtime.gcs", logging.INFO, __file__, 1, "served %s", (1,), None)
    assert all(limit.filter(info) for _ in range(50))


def test_only_the_first_record_of_a_kind_keeps_its_traceback() -> None:
    limit = RateLimit(per_minute=10)
    passed = _records(limit, 4, exc=True)
    assert [r.exc_info is not None for r in passed] == [True, False, False, False]
