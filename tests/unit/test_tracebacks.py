"""Which frames a task's error shows, and how remote frames are named (``runtime._tracebacks``)."""

from __future__ import annotations

import linecache
import os
import threading
from collections.abc import Iterator

import pytest

from runtime import _tracebacks
from runtime.exceptions import TaskError

OWN = os.path.join(os.path.dirname(os.path.abspath(_tracebacks.__file__)), "api", "_client.py")
STDLIB = threading.__file__
USER = "/home/me/project/analysis.py"


def test_cellrays_frames_and_the_stdlib_they_call_are_hidden() -> None:
    frames = [USER, STDLIB, USER, OWN, STDLIB, OWN, STDLIB]
    assert _tracebacks.shown(frames) == [True, True, True, False, False, False, False]


def test_user_code_called_back_by_cellray_stays_and_so_do_its_stdlib_calls() -> None:
    frames = [OWN, STDLIB, USER, STDLIB]
    assert _tracebacks.shown(frames) == [False, False, True, True]


@pytest.fixture
def mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.delenv(_tracebacks.ENV, raising=False)
    yield monkeypatch


def test_the_mode_is_short_by_default_and_an_unknown_value_shows_all(mode: pytest.MonkeyPatch) -> None:
    assert not _tracebacks.full() and _tracebacks.mode_note() == ""
    mode.setenv(_tracebacks.ENV, "full")
    assert _tracebacks.full() and _tracebacks.mode_note() == ""
    mode.setenv(_tracebacks.ENV, "verbose")
    assert _tracebacks.full()
    assert "CELLRAY_TRACEBACK='verbose' is not one of short, full" in _tracebacks.mode_note()


def _raise_in_a_chain() -> None:
    try:
        {}["missing"]
    except KeyError as e:
        raise ValueError("while handling") from e


def test_user_traceback_filters_every_exception_of_a_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend this test file is cellray's: its frames go, the chain's lines stay.
    here = os.path.abspath(__file__)
    monkeypatch.setattr(_tracebacks, "_OWN_DIRS", (here,))
    try:
        _raise_in_a_chain()
    except ValueError as e:
        text = _tracebacks.user_traceback(e)
    assert "File " not in text
    assert "KeyError: 'missing'" in text and "ValueError: while handling" in text
    assert "The above exception was the direct cause" in text


def test_trimmed_drops_own_entries_and_keeps_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        _raise_in_a_chain()
    except ValueError as e:
        tb = e.__traceback__
    assert tb is not None
    monkeypatch.setattr(_tracebacks, "_OWN_DIRS", (os.path.abspath(__file__),))
    assert _tracebacks.trimmed(tb) is None
    monkeypatch.setattr(_tracebacks, "_OWN_DIRS", ("/nowhere/",))
    kept = _tracebacks.trimmed(tb)
    assert kept is not None and kept.tb_frame is tb.tb_frame and kept.tb_next is not None


CELL = "/tmp/ipykernel_1/1234.py"
SOURCE = ("import runtime as rt\n\ndef check(x):\n    if x > 1:\n        raise ValueError(x)\n\n"
          "@rt.remote\ndef bad(x):\n    y = x + 1\n    return check(y)\n")
REMOTE = (f'Traceback (most recent call last):\n  File "{CELL}", line 10, in bad\n'
          f'  File "{CELL}", line 5, in check\n  File "{USER}", line 3, in f\n    g()\nValueError: 6\n')


@pytest.fixture
def cell() -> Iterator[str]:
    linecache.cache[CELL] = (len(SOURCE), None, SOURCE.splitlines(True), CELL)
    try:
        yield CELL
    finally:
        linecache.cache.pop(CELL, None)


def _name(filename: str) -> str | None:
    return "Cell In[7]" if filename == CELL else None


def test_parse_splits_entries_from_the_other_lines() -> None:
    items = _tracebacks.parse(REMOTE)
    assert items[0] == "Traceback (most recent call last):"
    assert items[1] == _tracebacks.Frame(CELL, 10, "bad")
    assert items[3] == _tracebacks.Frame(USER, 3, "f", ("    g()",))
    assert items[-1] == "ValueError: 6"


def test_plain_names_cells_and_fills_in_their_lines(cell: str) -> None:
    text = _tracebacks.plain(REMOTE, _name)
    assert "  Cell In[7], line 10, in bad\n    return check(y)\n" in text
    assert "  Cell In[7], line 5, in check\n    raise ValueError(x)\n" in text
    assert f'  File "{USER}", line 3, in f\n    g()\n' in text  # a module's entry as it came


def test_source_keeps_to_the_function(cell: str) -> None:
    assert _tracebacks.Frame(cell, 5, "check").source(2) == [
        (3, "def check(x):"), (4, "    if x > 1:"), (5, "        raise ValueError(x)")]
    assert _tracebacks.Frame(cell, 9, "bad").source(2) == [
        (8, "def bad(x):"), (9, "    y = x + 1"), (10, "    return check(y)")]
    assert _tracebacks.Frame("/no/such/file.py", 3, "f").source(2) == []


def test_a_task_error_shows_the_remote_text_of_the_mode(mode: pytest.MonkeyPatch) -> None:
    err = TaskError("f() raised ValueError", function_name="f", task_id="ab" * 8, node_id="cd" * 8,
                    pid=42, remote_traceback="Traceback:\nValueError: short\n",
                    full_traceback="Traceback:\n  File \"/x/runtime/worker/executor.py\", line 1, in run\n"
                                   "ValueError: short\n")
    assert str(err).startswith("f() (task abababababab) raised on node cdcdcdcdcdcd, worker pid 42:")
    assert "executor.py" not in str(err)
    mode.setenv(_tracebacks.ENV, "full")
    assert "executor.py" in str(err)
    assert "executor.py" in str(err.__reduce__()[0](*err.__reduce__()[1]))  # pickles with it
