"""The magics' argument parsers (IPython ``magic_arguments``), and nothing else.

Values are parsed, never evaluated: numbers with ``float``/``int``, ``--resources`` with
``json.loads``, names checked to be identifiers. A bad argument raises ``UsageError`` with
the problem and the magic's usage line.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

_SESSION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# ---- value types (argparse turns their ArgumentTypeError into a usage error) ----

def unquote(text: str) -> str:
    """IPython splits magic lines keeping the quotes: ``'{"a": 1}'`` arrives quoted."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def resources_json(text: str) -> dict[str, float]:
    """``'{"accel": 2}'`` -> ``{"accel": 2.0}``: a JSON object of resource name -> amount."""
    text = unquote(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"accel\": 2}}', got {text!r} ({e.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of name -> amount, got {text!r}")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise argparse.ArgumentTypeError(f"resource {k!r} needs an amount >= 0, got {v!r}")
        if k in ("CPU", "GPU"):
            raise argparse.ArgumentTypeError(f"use --{k.lower()}s instead of {k!r} in --resources")
        out[k] = float(v)
    return out


def identifier(text: str) -> str:
    if not text.isidentifier():
        raise argparse.ArgumentTypeError(f"expected a Python name, got {text!r}")
    return text


def name_list(text: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``, each a Python name."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated Python names, got {text!r}")
    return names


def session_name(text: str) -> str:
    if not _SESSION_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"expected a session name of letters, digits, '_', '-' and '.', got {text!r}")
    return text


def parse(magic: Callable[..., Any], line: str) -> argparse.Namespace:
    """Parse ``line`` with ``magic``'s parser; a bad line raises UsageError with the usage."""
    try:
        args: argparse.Namespace = parse_argstring(magic, line)
    except UsageError as e:
        parser = magic.parser  # type: ignore[attr-defined]
        usage = " ".join(parser.format_usage().replace("::", "").split())
        raise UsageError(f"{e}\nusage: {usage}\nSee %{magic.__name__}? for help.") from None
    return args


# ---- the parsers (applied to the magics in magics.py) ----

def _stack(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Apply ``decorators`` as if they were written above a function, top to bottom."""
    def apply(fn: Any) -> Any:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn
    return apply


CLUSTER_ACTIONS = ("start", "attach", "status", "dashboard", "stop")

cluster = _stack(
    magic_arguments(),
    argument("action", nargs="?", choices=CLUSTER_ACTIONS, metavar="ACTION",
             help="start | attach ADDRESS | status | dashboard | stop (default: status)"),
    argument("address", nargs="?", type=unquote, metavar="ADDRESS",
             help="attach: host:port of the cluster's GCS (as `cellray start --head` prints)"),
    argument("--nodes", type=positive_int, default=None, metavar="N",
             help="start: number of nodes (default 1)"),
    argument("--cpus", type=non_negative, default=None, metavar="C",
             help="start: CPUs per node (default: this machine's count)"),
    argument("--gpus", type=non_negative, default=None, metavar="G",
             help="start: GPUs per node (default: the GPUs NVML finds)"),
    argument("--resources", type=resources_json, default=None, metavar="JSON",
             help='start: custom resources per node, e.g. \'{"accel": 2}\''),
    argument("--gcs-storage", type=unquote, default=None, metavar="URL",
             help="start: where the GCS keeps its tables: sqlite (default), "
                  "sqlite:///PATH.db, redis://HOST:PORT[,HOST:PORT] or memory"),
    argument("--token-file", type=unquote, default=None, metavar="F",
             help="attach: the cluster's token file (found automatically on this machine)"),
    argument("--bundle", type=unquote, default=None, metavar="FILE",
             help="attach: the join bundle of a cluster started with --tls (instead of --token-file)"),
)

_run_options = (
    argument("--cpus", type=non_negative, default=None, metavar="N",
             help="CPUs the cell needs (default 1; sessions: 0)"),
    argument("--gpus", type=non_negative, default=None, metavar="N", help="GPUs the cell needs"),
    argument("--resources", type=resources_json, default=None, metavar="JSON",
             help='custom resources, e.g. \'{"accel": 1}\''),
    argument("--name", type=unquote, default=None, metavar="NAME",
             help="what to call the task (default: cell-N, after the cell's number)"),
    argument("--pull", type=name_list, default=[], metavar="a,b",
             help="names the cell assigns to copy back into the notebook"),
    argument("--no-block", action="store_true",
             help="return a future at once instead of waiting; output still lands in this cell"),
    argument("--out", type=identifier, default=None, metavar="VAR",
             help="also store the value (with --no-block: the future) in VAR"),
    argument("--session", type=session_name, default=None, metavar="NAME",
             help="run in the persistent namespace NAME (created on first use, with this "
                  "cell's resources)"),
)

remote = _stack(magic_arguments(), *_run_options)

#: Options that take a value (for splitting ``%remote OPTIONS EXPR``).
REMOTE_VALUE_OPTIONS = frozenset({"--cpus", "--gpus", "--resources", "--name", "--pull", "--out",
                                  "--session"})

push = _stack(
    magic_arguments(),
    argument("names", nargs="+", type=identifier, metavar="NAME", help="notebook names to send"),
    argument("--session", type=session_name, default=None, metavar="NAME",
             help="the session to send them to (default: the only session in use)"),
)

pull = _stack(
    magic_arguments(),
    argument("names", nargs="+", type=identifier, metavar="NAME", help="session names to fetch"),
    argument("--session", type=session_name, default=None, metavar="NAME",
             help="the session to fetch them from (default: the only session in use)"),
)

_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|\S+""")


def split_line_options(line: str) -> tuple[str, str]:
    """Split ``%remote [OPTIONS] EXPR`` into the options and the expression's source.

    Options come first; the expression starts at the first token that is not an option
    or an option's value (or after a lone ``--``).
    """
    pos = 0
    expect_value = False
    for m in _TOKEN.finditer(line):
        token = m.group()
        if expect_value:
            expect_value = False
        elif token == "--":
            return line[:m.start()], line[m.end():].strip()
        elif token.startswith("--"):
            flag = token.split("=", 1)[0]
            expect_value = flag in REMOTE_VALUE_OPTIONS and "=" not in token
        else:
            return line[:m.start()], line[m.start():].strip()
        pos = m.end()
    return line[:pos], ""


#: How ``rt.init()``'s messages name what to pass, and the ``%cluster attach`` words for it.
_INIT_TO_ATTACH = (
    ("rt.init(address=..., token_file=PATH)", "%cluster attach {address} --token-file PATH"),
    ("token_file=PATH", "--token-file PATH"),
    ("rt.init(address=..., bundle=FILE)", "%cluster attach {address} --bundle FILE"),
)


def in_attach_terms(message: str, address: str) -> str:
    """``message``, worded by the runtime for ``rt.init()``, with the ``%cluster attach``
    flags in place of its keywords, so that it names the flag the user can type."""
    for keyword, flag in _INIT_TO_ATTACH:
        message = message.replace(keyword, flag.format(address=address))
    return message
