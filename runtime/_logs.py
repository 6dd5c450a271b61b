"""Rate limits for the daemons' logs: a flood of one kind of error (malformed requests, a
peer that keeps failing) must not fill the disk or drown the lines that matter.

``RateLimit`` is a logging filter: for each kind of record (its logger and message
template) at WARNING or above, the first ``per_minute`` in a minute pass; the rest are
counted, and the next one that passes says how many were left out. A traceback is kept
only on the first record of its kind: later ones pass without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimit(logging.Filter):
    """At most ``per_minute`` records of one kind a minute; one traceback per kind."""

    def __init__(self, per_minute: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.per_minute = per_minute
        self._clock = clock
        #: kind -> (start of its current minute, records passed in it, records left out).
        self._seen: dict[tuple[str, str], list[float]] = {}
        self._traced: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, str(record.msg))
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is None or now - seen[0] >= 60:
            left_out = int(seen[2]) if seen is not None else 0
            seen = self._seen[kind] = [now, 0, 0]
            if left_out:
                record.msg = f"{record.msg} ({left_out} more like this were not logged in the last minute)"
        if seen[1] >= self.per_minute:
            seen[2] += 1
            return False
        seen[1] += 1
        if record.exc_info:
            if kind in self._traced:
                record.exc_info, record.exc_text = None, None
            else:
                self._traced.add(kind)
        if len(self._seen) > 10_000:  # kinds are message templates: a bounded set in practice
            self._seen.clear()
        return True


def install(handler_owner: logging.Logger | None = None, per_minute: int = 10) -> RateLimit:
    """Put a ``RateLimit`` on every handler of ``handler_owner`` (the root logger)."""
    limit = RateLimit(per_minute)
    for handler in (handler_owner or logging.getLogger()).handlers:
        handler.addFilter(limit)
    return limit
