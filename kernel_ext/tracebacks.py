"""A failed task's error as IPython shows its own: coloured frames, cells as ``Cell In[5]``.

``rt.get`` raises a ``TaskError``; IPython asks it for its traceback (its
``_render_traceback_`` hook) and ``runtime._tracebacks.render`` hands the question to the
renderer installed here. The answer is one traceback in IPython's own style:

* the notebook's frames up to the ``rt.get`` call, rendered by IPython itself
  (``InteractiveTB``), cellray's frames (``runtime``, ``widgets``, ``kernel_ext``) cut;
* one line naming the task and where it ran;
* the remote frames: ``Cell In[5], line 3, in f`` for a function defined in cell 5, with the
  cell's lines around the failing one and ``---->`` at it (the worker has no copy of the
  cell; this kernel's ``linecache`` has), ``File /path/mod.py:3, in f`` for a module;
* the remote exception, as the worker printed it.

The colours are those of IPython's current theme (``%colors``). ``CELLRAY_TRACEBACK=full``
keeps every frame. Anything this module cannot draw falls back to the plain text of
``TaskError.__str__``, so an error is never hidden by its own rendering.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from runtime import _tracebacks

logger = logging.getLogger(__name__)

#: Lines of source shown above and below the failing line of a remote frame (IPython's
#: default context of 5 lines in all shows two on either side, too).
CONTEXT = 2
#: Width of the line-number column, IPython's.
_NUMBER_WIDTH = 7
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: The last line of a traceback: ``ValueError: message`` (a dotted name, then ``:`` or end).
_EXCEPTION_LINE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?P<rest>(?::.*)?)$")


def install() -> None:
    """Render ``TaskError`` tracebacks in IPython's style from now on."""
    _tracebacks.set_renderer(render)


def uninstall() -> None:
    """Back to the plain rendering of ``runtime._tracebacks``."""
    before = _tracebacks.set_renderer(None)
    if before is not render:  # another renderer took over since: keep it
        _tracebacks.set_renderer(before)


def render(err: BaseException) -> list[str]:
    """IPython's structured traceback (a list of strings) for the ``TaskError`` ``err``."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            return _plain(err)
        return _local(shell, err) + _remote(err, _Style(_theme_name(shell)))
    except Exception:  # never let the rendering hide the error itself
        logger.debug("rendering a TaskError's traceback failed", exc_info=True)
        return _plain(err)


def _plain(err: BaseException) -> list[str]:
    return _tracebacks.render_plain(err, str(err))


def _theme_name(shell: Any) -> str:
    name = getattr(shell.InteractiveTB, "_theme_name", None) or str(shell.colors)
    return str(name).lower()


def _local(shell: Any, err: BaseException) -> list[str]:
    """IPython's own rendering of the local frames, without its final exception line."""
    tb = err.__traceback__
    if not _tracebacks.full() and tb is not None:
        # The first entry is IPython's run_code frame, which InteractiveTB skips itself.
        tb = type(tb)(_tracebacks.trimmed(tb.tb_next), tb.tb_frame, tb.tb_lasti, tb.tb_lineno)
    stb = list(shell.InteractiveTB.structured_traceback(type(err), err, tb))
    if stb and _ANSI.sub("", stb[-1]).lstrip().startswith(type(err).__name__):
        stb.pop()  # "TaskError(ValueError): <the whole remote text>": the remote part says it
    return stb


class _Style:
    """Coloured text in the current IPython theme (plain when it is ``nocolor``)."""

    def __init__(self, theme_name: str) -> None:
        from IPython.utils.PyColorize import Parser, theme_table

        self.theme = theme_table[theme_name] if theme_name in theme_table else theme_table["nocolor"]
        self.colored = theme_name != "nocolor"
        self._parser = Parser(theme_name=theme_name if theme_name in theme_table else "nocolor")

    def tokens(self, *pairs: tuple[str, str]) -> str:
        """``(token name, text)`` pairs, coloured: ``("FilenameEm", "In[5]")``."""
        from pygments.token import Token  # type: ignore[import-untyped]

        return str(self.theme.format([(getattr(Token, kind) if kind else Token, text)
                                      for kind, text in pairs]))

    def source(self, line: str) -> str:
        if not self.colored:
            return line
        return str(self._parser.format(line, "str")).rstrip("\n")

    def arrow(self, width: int) -> str:
        return str(self.theme.make_arrow(width))


def _remote(err: BaseException, style: _Style) -> list[str]:
    """The boundary line, the remote frames and the remote exception, one string each."""
    boundary = getattr(err, "boundary", None)
    where = boundary() if callable(boundary) else type(err).__name__
    out = [style.tokens(("ExcName", "Remote traceback"), ("", f" of {where}"))]
    text = str(getattr(err, "remote_traceback", "") or "")
    if _tracebacks.full():
        text = str(getattr(err, "full_traceback", "") or text)
    tail: list[str] = []
    for item in _tracebacks.parse(text):
        if isinstance(item, _tracebacks.Frame):
            if tail:
                out.append("\n".join(tail))
                tail = []
            out.append(_frame(item, style))
        elif item.strip() != "Traceback (most recent call last):":
            tail.append(_exception_line(item, style))
    note = _tracebacks.mode_note()
    if note:
        tail.append(note)
    if tail:
        out.append("\n".join(tail))
    return out


def _frame(frame: _tracebacks.Frame, style: _Style) -> str:
    """One remote frame as IPython draws one: where, then the source around the line."""
    cell = _tracebacks.cell_name(frame.filename)
    if cell is not None:
        label, name = cell.split(" ", 1)
        head = style.tokens(("NormalEm", label + " "), ("FilenameEm", name),
                            ("FilenameEm", f", line {frame.lineno}"))
    else:
        head = style.tokens(("NormalEm", "File "), ("FilenameEm", f"{_home(frame.filename)}:{frame.lineno}"))
    head += style.tokens(("", ", in "), ("VName", frame.name))
    lines = [head]
    source = frame.source(CONTEXT)
    if not source and frame.lines:  # not in this kernel's linecache: the worker's copy
        source = [(frame.lineno, frame.lines[0][4:])]
    for n, line in source:
        if n == frame.lineno:
            pad = _NUMBER_WIDTH - len(str(n))
            lines.append(style.tokens(("LinenoEm", style.arrow(pad)), ("LinenoEm", str(n)))
                         + " " + style.source(line))
        else:
            lines.append(style.tokens(("LinenoEm", f"{n:>{_NUMBER_WIDTH}}")) + " " + style.source(line))
    return "\n".join(lines) + "\n"


def _exception_line(line: str, style: _Style) -> str:
    m = _EXCEPTION_LINE.match(line)
    if m is None or not line or line[0].isspace():
        return line
    return style.tokens(("ExcName", m["name"]), ("", m["rest"]))


def _home(path: str) -> str:
    from IPython.utils.path import compress_user

    return str(compress_user(path))
