"""A failed task's traceback in a real kernel: IPython's style, the user's frames only.

A cell defines a remote function that raises at a known line; a later cell gets its
result. The error shows the getting cell's frame, one line naming the task, then the
remote frames named ``Cell In[n], line k`` with the cell's lines and an arrow at the
failing one, and the exception; none of cellray's frames nor ``threading.py``.
``CELLRAY_TRACEBACK=full`` shows them all.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

pytestmark = [pytest.mark.notebooks, pytest.mark.cluster]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

DEFINE = ("import runtime as rt\n"
          "\n"
          "def check(x):\n"
          "    if x > 1:\n"
          "        raise ValueError(f'too big: {x}')\n"
          "\n"
          "@rt.remote\n"
          "def bad(x):\n"
          "    y = x + 1\n"
          "    return check(y)\n")


def _text(error: dict[str, Any] | None) -> str:
    assert error is not None
    return _ANSI.sub("", "\n".join(error["traceback"]))


def _define(kernel: Any) -> int:
    ex = kernel.check(DEFINE)
    return int(ex.reply["content"]["execution_count"])


def test_remote_frames_are_named_after_their_cell(kernel: Any) -> None:
    n = _define(kernel)
    ex = kernel.execute("rt.get(bad.remote(5))")
    assert not ex.ok
    text = _text(ex.error)
    assert ex.error is not None and ex.error["ename"] == "TaskError(ValueError)"
    get_cell = ex.reply["content"]["execution_count"]
    # The caller's frame, IPython's own rendering.
    assert re.search(rf"Cell In\[{get_cell}\], line 1\n----> 1 rt\.get\(bad\.remote\(5\)\)", text), text
    # The boundary, then the remote frames, named after the defining cell, with its lines.
    assert re.search(r"Remote traceback of bad\(\) \(task \w+\) raised on node \w+, worker pid \d+", text)
    assert re.search(rf"Cell In\[{n}\], line 10, in bad\n\s+8 def bad\(x\):\n\s+9     y = x \+ 1\n"
                     r"---> 10     return check\(y\)", text), text
    assert re.search(rf"Cell In\[{n}\], line 5, in check\n(.*\n)*----> 5 {' ' * 8}raise ValueError",
                     text), text
    assert text.rstrip().endswith("ValueError: too big: 6"), text
    for internal in ("runtime/", "widgets/", "kernel_ext/", "threading.py", "ipykernel_"):
        assert internal not in text, (internal, text)


def test_many_refs_through_the_progress_path_hide_cellrays_frames(kernel: Any) -> None:
    _define(kernel)
    ex = kernel.execute("rt.get([bad.remote(0), bad.remote(3)])")
    text = _text(ex.error)
    assert "ValueError: too big: 4" in text
    for internal in ("runtime/", "widgets/", "threading.py"):
        assert internal not in text, (internal, text)


def test_the_error_keeps_its_type_and_str(kernel: Any) -> None:
    n = _define(kernel)
    ex = kernel.check("try:\n    rt.get(bad.remote(7))\nexcept ValueError as e:\n    message = str(e)\n"
                      "print(message)")
    out = ex.stream()
    assert f"Cell In[{n}], line 10, in bad" in out, out
    assert "return check(y)" in out and "ValueError: too big: 8" in out


def test_full_mode_shows_every_frame(kernel: Any) -> None:
    _define(kernel)
    kernel.check("%env CELLRAY_TRACEBACK=full")
    try:
        ex = kernel.execute("rt.get(bad.remote(5))")
    finally:
        kernel.check("%env CELLRAY_TRACEBACK=short")
    text = _text(ex.error)
    assert "runtime/api/_core.py" in text and "runtime/api/_client.py" in text, text
    assert "runtime/worker/executor.py" in text, text  # the worker's frames too
    assert "ValueError: too big: 6" in text
