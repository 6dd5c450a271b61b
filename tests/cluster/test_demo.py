"""``python -m runtime.demo`` (what ``make demo`` runs) works end to end."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def test_demo_runs_every_step_and_exits_0(tmp_path: pathlib.Path,
                                          subprocess_env: Callable[..., dict[str, str]]) -> None:
    result = subprocess.run([sys.executable, "-m", "runtime.demo"], text=True,
                            capture_output=True, timeout=90, stdin=subprocess.DEVNULL, check=False,
                            env=subprocess_env(CELLRAY_TMPDIR=str(tmp_path / "cellray")))
    out = result.stdout
    assert result.returncode == 0, f"stdout:\n{out}\nstderr:\n{result.stderr}"
    expected = [
        "cellray demo: started a local cluster at 127.0.0.1:",
        f"session {tmp_path / 'cellray'}",
        "sum of squares: 328350 (expected 328350)",
        # the task's prints, streamed back and tagged with the task's name and pid
        "(count_down pid=", ") count_down: liftoff",
        "count_down returned 'done'",
        "put (1000, 2000) float64",
        ": identical",
        "zero-copy read-only view of shared memory: yes (owndata=False, writeable=False)",
        "fib(10) = 55",
        "caught TaskError(ValueError); isinstance(err, ValueError) = True",
        "remote traceback ends with: ValueError: port 70000 is out of range 1..65535",
        "total:     {CPU: 2, memory: ",
        "demo finished OK.",
    ]
    missing = [line for line in expected if line not in out]
    assert not missing, f"missing from the demo's output: {missing}\nstdout:\n{out}"
    assert "Traceback" not in result.stderr, result.stderr
