"""A failed task's traceback as a script prints it: the user's frames on both sides.

A driver script in a subprocess (its own cluster) gets a task that raises: Python's
default hook prints the script's frames down to ``rt.get``, the ``get`` line where the
error crosses over, the task's line (which task, on which node and worker), and the remote
frames of the script's functions, ending in the original exception line. None of
cellray's frames (the client, the worker's executor), nor ``threading.py``, unless
``CELLRAY_TRACEBACK=full``.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

SCRIPT = '''\
import runtime as rt


def check(x):
    raise ValueError(f"bad value {x}")


@rt.remote
def task(x):
    y = x + 1
    return check(y)


@rt.remote
def outer():
    return rt.get(task.remote(10))


def main():
    rt.init(num_cpus=2)
    try:
        try:
            rt.get(task.remote(1))
        except ValueError as e:
            print("caught", type(e).__name__, e.cause_type_name, flush=True)
        rt.get(outer.remote())
    finally:
        rt.shutdown()


main()
'''


def _run(tmp_path: pathlib.Path, env: dict[str, str]) -> str:
    script = tmp_path / "driver.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=90, cwd=str(tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "caught TaskError(ValueError) ValueError" in out.stdout, out.stdout + out.stderr
    return out.stderr


def test_a_script_shows_its_own_frames_on_both_sides(
        tmp_path: pathlib.Path, subprocess_env: Callable[..., dict[str, str]]) -> None:
    err = _run(tmp_path, subprocess_env(CELLRAY_TRACEBACK="short"))
    script = re.escape(str(tmp_path / "driver.py"))
    local = re.search(rf'File "{script}", line 26, in main\n    rt\.get\(outer\.remote\(\)\)\n'
                      r'  File "[^"]+", line \d+, in get\n    raise error\n'
                      r"\S*TaskError\(ValueError\): task\(\) \(task \w+\) raised on node \w+, "
                      r"worker pid \d+:", err)
    assert local, err
    # The error of a task that outer() got passes through outer() as it was raised.
    remote = err[local.end():]
    assert re.search(rf'File "{script}", line 11, in task\n    return check\(y\)', remote), err
    assert re.search(rf'File "{script}", line 5, in check\n    raise ValueError', remote), err
    assert err.rstrip().endswith("ValueError: bad value 11"), err
    assert err.count('File "') == 5, err  # <module>, main, get | task, check
    for internal in ("runtime/api/_client.py", "runtime/worker", "threading.py", "widgets/"):
        assert internal not in err, (internal, err)


def test_full_mode_shows_cellrays_frames(
        tmp_path: pathlib.Path, subprocess_env: Callable[..., dict[str, str]]) -> None:
    err = _run(tmp_path, subprocess_env(CELLRAY_TRACEBACK="full"))
    assert "runtime/api/_client.py" in err, err
    assert "runtime/worker/executor.py" in err, err
    assert err.rstrip().endswith("ValueError: bad value 11"), err
