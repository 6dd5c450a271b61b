"""The pure parts of the extension: free-name analysis, line splitting, rendering. No cluster."""

from __future__ import annotations

import argparse
import linecache

import pytest

from kernel_ext import arguments, display, worker
from kernel_ext.names import free_names


@pytest.mark.parametrize("source, names", [
    ("y = x + 1\nprint(y, z)", ["x", "print", "z"]),
    ("x = x + 1", ["x"]),                                   # the right side runs first
    ("x += 1", ["x"]),
    ("total = 0\nfor v in values:\n    total += v", ["values"]),
    ("for i in xs:\n    acc = acc + i", ["xs", "acc"]),
    ("def g(a):\n    return a + b + c\nc = 1\ng(2)", ["b"]),  # c is assigned before g runs
    ("[i * k for i in range(n)]", ["range", "n", "k"]),
    ("{k: v for k, v in pairs}", ["pairs"]),
    ("import numpy as np\nnp.zeros(3)", []),
    ("import os.path\nos.path.join('a')", []),
    ("from math import *\nsqrt(2)", ["sqrt"]),
    ("class A(Base):\n    y = q\n    def m(self):\n        return self.y + w", ["Base", "q", "w"]),
    ("try:\n    pass\nexcept E as e:\n    print(e)", ["E", "print"]),
    ("if (m := f(1)) > 0:\n    print(m)", ["f", "print"]),
    ("[(w := i) for i in s]\nw", ["s"]),
    ("lambda v: v + u", ["u"]),
    ("df.shape", ["df"]),
    ("with open(p) as fh:\n    fh.read()", ["open", "p"]),
    ("@deco\ndef h(x=dflt) -> Ret:\n    pass", ["deco", "dflt", "Ret"]),
    ("a, *b = c", ["c"]),
    ("del gone", []),
    ("def f():\n    global g\n    g = 1\n    return h", ["h"]),
    (("match cmd:\n    case [x, *rest]:\n        print(x, rest)\n    case {'k': v, **others}:\n"
      "        print(v, others)"), ["cmd", "print"]),
    ("async def co():\n    await other()", ["other"]),
])
def test_free_names(source: str, names: list[str]) -> None:
    assert free_names(source) == names


def test_free_names_of_bad_syntax_raises() -> None:
    with pytest.raises(SyntaxError):
        free_names("x = (")


@pytest.mark.parametrize("line, options, code", [
    ("1 + 1", "", "1 + 1"),
    ("--cpus 2 sum(range(10))", "--cpus 2 ", "sum(range(10))"),
    ("--no-block --out f slow()", "--no-block --out f ", "slow()"),
    ("--resources '{\"a\": 1}' f(x)", "--resources '{\"a\": 1}' ", "f(x)"),
    ("--cpus=2 f()", "--cpus=2 ", "f()"),
    ("--cpus 2 -- -x", "--cpus 2 ", "-x"),
    ("--cpus 2", "--cpus 2", ""),
])
def test_split_line_options(line: str, options: str, code: str) -> None:
    assert arguments.split_line_options(line) == (options, code)


@pytest.mark.parametrize("text, value", [("2", 2.0), ("0.5", 0.5), ("0", 0.0)])
def test_non_negative(text: str, value: float) -> None:
    assert arguments.non_negative(text) == value


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "two"])
def test_non_negative_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        arguments.non_negative(text)


def test_resources_json_unquotes_and_validates() -> None:
    assert arguments.resources_json("'{\"accel\": 2}'") == {"accel": 2.0}
    for bad in ("{accel: 2}", "[1]", '{"a": -1}', '{"a": true}', '{"GPU": 1}'):
        with pytest.raises(argparse.ArgumentTypeError):
            arguments.resources_json(bad)


def test_worker_runs_a_cell_and_returns_its_last_expression() -> None:
    value, pulled = worker.run_cell("import math\nr = math.sqrt(x)\nr * 2", "<cell-t1>",
                                    {"x": 16}, {}, ("r",))
    assert (value, pulled) == (8.0, {"r": 4.0})
    assert linecache.getline("<cell-t1>", 2) == "r = math.sqrt(x)\n"
    value, _ = worker.run_cell("y = 1", "<cell-t2>", {}, {"j": "json"}, ())
    assert value is None
    with pytest.raises(NameError, match="'nope' is not defined in <cell-t3>"):
        worker.run_cell("pass", "<cell-t3>", {}, {}, ("nope",))


def test_session_namespace_persists() -> None:
    s = worker.NotebookSession()
    s.run("a = 1", "<cell-s1>", {}, {}, ())
    assert s.run("a + b", "<cell-s2>", {"b": 2}, {}, ()) == (3, {})
    assert s.push({"c": 3}, {"js": "json"}) == ["c", "js"]
    assert s.pull(("a", "c")) == {"a": 1, "c": 3}
    assert {"a", "b", "c", "js"} <= set(s.names())


def test_cell_traceback_drops_the_exec_frames() -> None:
    remote = ('Traceback (most recent call last):\n'
              '  File "/site/kernel_ext/worker.py", line 75, in run_cell\n'
              '    value = execute(source, filename, ns)\n'
              '            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n'
              '  File "/site/kernel_ext/worker.py", line 62, in execute\n'
              '    exec(code, ns)\n'
              '  File "<cell-4>", line 2, in <module>\n'
              '    1 / 0\n'
              'ZeroDivisionError: division by zero\n')
    assert display.cell_traceback(remote) == (
        'Traceback (most recent call last):\n'
        '  File "<cell-4>", line 2, in <module>\n'
        '    1 / 0\n'
        'ZeroDivisionError: division by zero\n')


def test_text_table_aligns_columns() -> None:
    assert display.text_table(["a", "bb"], [["xxx", "y"]]) == "a    bb\n---  --\nxxx  y"


def test_human_bytes() -> None:
    assert [display.format_bytes(n) for n in (12, 1536, 11_000_000)] == ["12 B", "1.5 KiB", "10.5 MiB"]
