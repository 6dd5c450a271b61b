"""Capturing a worker's prints and streaming them, line by line, to the task's owner."""

from __future__ import annotations

import io
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

from runtime.protocol import node_pb2

if TYPE_CHECKING:
    from runtime.api._client import CoreClient


class TaskOutput(io.TextIOBase):
    """Replaces sys.stdout / sys.stderr in a worker.

    Complete lines go to the owner of the task running now (tagged with its id, the
    function's name and this pid) and to the worker's own log file. A partial line waits
    for its newline or for the task's end (``flush_task``).
    """

    def __init__(self, client: CoreClient, original: TextIO, is_stderr: bool) -> None:
        self._client = client
        self._original = original
        self._is_stderr = is_stderr
        self._buf = ""
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._original.fileno()

    def write(self, s: Any) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._original.write(s)
        with self._lock:
            self._buf += s
            if "\n" not in s:
                return len(s)
            *lines, self._buf = self._buf.split("\n")
        self._emit(lines)
        return len(s)

    def flush(self) -> None:
        self._original.flush()

    def flush_task(self) -> None:
        """Send the partial line left at the end of a task."""
        with self._lock:
            rest, self._buf = self._buf, ""
        if rest:
            self._emit([rest])
        self._original.flush()

    def _emit(self, lines: list[str]) -> None:
        stack = self._client.task_stack
        if not stack:
            return
        spec = stack[-1]
        op = node_pb2.ClientOp()
        log = op.log
        log.task_id, log.name, log.pid, log.stderr = spec.task_id, spec.name, self._pid, self._is_stderr
        log.owner_id = spec.driver_id or spec.owner_id
        log.origin = spec.origin
        log.lines.extend(lines)
        self._client.send(op)


def flush_task_output() -> None:
    """Send the partial lines a task left on ``sys.stdout`` / ``sys.stderr`` (at its end)."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, TaskOutput):
            stream.flush_task()
