"""Which frames a task's error shows: the user's, on both sides of the remote boundary.

A failed task's error travels from the worker to the driver and is raised by ``get``.
Shown as Python would show it, it would run through cellray's own frames twice: the
worker's executor before the user's function, and ``get``, the client and the widgets'
progress bar (with ``threading.py`` under them) between the user's call and the raise.
This module decides what is shown instead:

* the driver's frames up to the user's ``get`` call (``trimmed``),
* the remote frames of the user's code only (``user_traceback``, on the worker),
* remote frames of functions defined in a notebook cell named as IPython names its own,
  ``Cell In[5], line 3``, with the cell's lines, which only the driver's ``linecache``
  holds (``Frame``, ``parse``, ``cell_name``, ``plain``).

``CELLRAY_TRACEBACK=full`` (read each time an error is shown, so ``%env`` works in a
notebook) shows every frame, cellray's included, for debugging cellray itself; ``short``
(the default) hides them. The worker records both versions, so the choice is the
driver's alone. This module imports nothing from IPython: ``cell_name`` finds a running
shell through ``sys.modules``.
"""

from __future__ import annotations

import linecache
import os
import re
import sys
import sysconfig
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: The environment variable of the traceback mode.
ENV = "CELLRAY_TRACEBACK"
#: Its values: ``short`` hides cellray's frames, ``full`` shows them.
MODES = ("short", "full")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: cellray's packages: their frames are plumbing to a user.
_OWN_DIRS = tuple(os.path.join(_ROOT, name) + os.sep for name in ("runtime", "widgets", "kernel_ext"))
_STDLIB_DIRS = tuple({os.path.realpath(sysconfig.get_paths()[k]) + os.sep
                      for k in ("stdlib", "platstdlib")})


def mode() -> str:
    """The traceback mode asked for in ``CELLRAY_TRACEBACK`` (``short`` when unset)."""
    return os.environ.get(ENV, "").strip().lower() or "short"


def full() -> bool:
    """Whether to show every frame. A value other than ``short`` or ``full`` shows every
    frame too, and ``mode_note`` says why."""
    return mode() != "short"


def mode_note() -> str:
    """A line saying that ``CELLRAY_TRACEBACK`` holds an unknown value, or ``""``."""
    if mode() in MODES:
        return ""
    return (f"({ENV}={os.environ.get(ENV, '')!r} is not one of {', '.join(MODES)}: "
            "showing every frame)")


def internal(filename: str) -> bool:
    """Whether ``filename`` is one of cellray's own modules."""
    return filename.startswith(_OWN_DIRS)


def _stdlib(filename: str) -> bool:
    return os.path.realpath(filename).startswith(_STDLIB_DIRS) if os.path.isabs(filename) else False


def shown(filenames: Sequence[str]) -> list[bool]:
    """Which of a traceback's frames (outermost first) a user sees.

    cellray's frames are hidden, and so are standard-library frames that cellray called
    (``threading.py`` under a blocked ``get``, ``concurrent.futures`` under an executor):
    those whose nearest caller outside the standard library is cellray's. Standard-library
    frames the user's code called stay.
    """
    keep: list[bool] = []
    caller_is_own = False
    for name in filenames:
        if internal(name):
            keep.append(False)
            caller_is_own = True
        elif _stdlib(name):
            keep.append(not caller_is_own)
        else:
            keep.append(True)
            caller_is_own = False
    return keep


def trimmed(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without the entries ``shown`` hides (a new chain; ``tb`` is not changed)."""
    entries: list[types.TracebackType] = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    keep = shown([e.tb_frame.f_code.co_filename for e in entries])
    out: types.TracebackType | None = None
    for entry, kept in zip(reversed(entries), reversed(keep), strict=True):
        if kept:
            out = types.TracebackType(out, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return out


def user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it, with only the frames ``shown`` keeps, in
    the exception and every exception chained to it."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    seen: set[int] = set()
    todo = [te]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        keep = shown([f.filename for f in t.stack])
        t.stack = traceback.StackSummary.from_list(
            [f for f, k in zip(t.stack, keep, strict=True) if k])
        todo.extend(x for x in (t.__cause__, t.__context__) if x is not None)
        todo.extend(getattr(t, "exceptions", None) or [])
    return "".join(te.format())


# ---- the remote traceback on the driver ---------------------------------------------------

#: The first line of one traceback entry, as ``traceback`` formats it.
_ENTRY = re.compile(r'^  File "(?P<file>[^"\n]*)", line (?P<line>\d+), in (?P<name>.*)$')


@dataclass(frozen=True)
class Frame:
    """One entry of a remote traceback: where, and the lines printed under it."""

    filename: str
    lineno: int
    name: str
    #: The lines printed under the entry by the worker (its source line, carets), unindented
    #: by nothing: exactly as they came. Empty when the worker had no source for the file.
    lines: tuple[str, ...] = ()

    def source(self, context: int = 0) -> list[tuple[int, str]]:
        """``(lineno, line)`` of the failing line and up to ``context`` lines either side,
        from this process's ``linecache`` (where IPython keeps its cells).

        An indented line's context stays in its function, as IPython's does: it stops at the
        first unindented line above (the ``def``, shown) and below (not shown), and at blank
        lines below.
        """
        line = linecache.getline(self.filename, self.lineno).rstrip("\n")
        if not line:
            return []
        nested = line[:1].isspace()
        before: list[tuple[int, str]] = []
        for n in range(self.lineno - 1, max(0, self.lineno - context - 1), -1):
            text = linecache.getline(self.filename, n).rstrip("\n")
            before.insert(0, (n, text))
            if nested and text.strip() and not text[:1].isspace():
                break
        while before and not before[0][1].strip():
            before.pop(0)
        after: list[tuple[int, str]] = []
        for n in range(self.lineno + 1, self.lineno + context + 1):
            text = linecache.getline(self.filename, n).rstrip("\n")
            if not text.strip() or (nested and not text[:1].isspace()):
                break
            after.append((n, text))
        return [*before, (self.lineno, line), *after]


def parse(text: str) -> list[str | Frame]:
    """A traceback's text as its entries (``Frame``) and the other lines, in order."""
    items: list[str | Frame] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _ENTRY.match(lines[i])
        if m is None:
            items.append(lines[i])
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].startswith("    "):
            j += 1
        items.append(Frame(m["file"], int(m["line"]), m["name"], tuple(lines[i + 1:j])))
        i = j
    return items


def cell_name(filename: str) -> str | None:
    """``Cell In[5]`` for the file IPython compiled cell 5 under, when IPython runs here."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return None
    try:
        named = shell.compile.format_code_name(filename)
    except Exception:  # noqa: BLE001 - another shell's compiler: keep the file's name
        return None
    return f"{named[0]} {named[1]}" if named else None


def plain(text: str, name: Callable[[str], str | None] = cell_name) -> str:
    """``text`` (a remote traceback) with cells named as IPython names them, and the
    source line filled in where the worker had none and this process has it."""
    out: list[str] = []
    for item in parse(text):
        if isinstance(item, str):
            out.append(item)
            continue
        cell = name(item.filename)
        where = f'File "{item.filename}"' if cell is None else cell
        out.append(f"  {where}, line {item.lineno}, in {item.name}")
        if item.lines:
            out.extend(item.lines)
        else:
            out.extend(f"    {line.strip()}" for _, line in item.source() if line.strip())
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


# ---- IPython --------------------------------------------------------------------------------

#: Renders a TaskError for IPython as a structured traceback (a list of strings); the
#: kernel extension installs its coloured one (``kernel_ext.tracebacks``).
Renderer = Callable[[BaseException], list[str]]
_renderer: Renderer | None = None


def set_renderer(renderer: Renderer | None) -> Renderer | None:
    """Install how IPython shows a ``TaskError``; returns the one it replaces."""
    global _renderer
    before, _renderer = _renderer, renderer
    return before


def render(err: BaseException, remote: str) -> list[str]:
    """What IPython shows for ``err`` (``TaskError._render_traceback_``): the installed
    renderer's lines, or plain text: the user's local frames, then ``remote``."""
    if _renderer is not None:
        return _renderer(err)
    return render_plain(err, remote)


def render_plain(err: BaseException, remote: str) -> list[str]:
    """``render`` without colours: the local frames as Python prints them, then ``remote``."""
    tb = err.__traceback__
    if tb is not None and tb.tb_frame.f_code.co_name == "run_code":  # IPython's own frame
        tb = tb.tb_next
    tb = tb if full() else trimmed(tb)
    local = traceback.format_list(traceback.extract_tb(tb)) if tb is not None else []
    return ["Traceback (most recent call last):\n" + plain("".join(local)).rstrip("\n"),
            f"{type(err).__name__}: {remote}"]
