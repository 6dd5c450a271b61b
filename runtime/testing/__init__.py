"""Test helpers that ship with cellray, like ``trio.testing`` and ``distributed.utils_test``.

- ``wait_for`` / ``async_wait_for``: poll a condition against a monotonic deadline; on
  timeout the error names the condition and the last value seen. Tests synchronise on
  state with these, never on ``sleep``.
- ``runtime.testing.pytest_plugin``: fixtures for tests of cellray and of code built on
  it (``no_process_leaks``, autouse; ``tmp_session_root``). Enable it with
  ``pytest_plugins = ["runtime.testing.pytest_plugin"]`` in a top-level conftest.py.

Nothing in ``runtime`` outside this package imports it.
"""

from __future__ import annotations

from runtime.testing.wait import WaitTimeoutError, async_wait_for, wait_for

__all__ = ["WaitTimeoutError", "async_wait_for", "wait_for"]
