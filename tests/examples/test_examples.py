"""Ray's documentation examples, rewritten as scripts that start with ``import runtime as
ray`` (issue 14, "Tests"). Each ``ex*.py`` here runs as a user would run it: a fresh Python
process, no cluster address in its environment (so ``ray.init()``, or the first call that
needs a cluster, starts a local one), its own session root (so it never attaches to another
cluster on this machine). A script asserts what the docs promise, prints "<name> ok" last,
and shuts its cluster down; the process-leak check of every test then verifies that nothing
it started is left.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPTS = sorted(HERE.glob("ex[0-9][0-9]_*.py"))
#: Per script; each finishes in a few seconds, the margin is for a loaded machine.
SCRIPT_TIMEOUT_S = 300

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(SCRIPT_TIMEOUT_S + 60)]


def _env(session_root: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CELLRAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["CELLRAY_TMPDIR"] = str(session_root)
    return env


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def test_every_example_is_collected() -> None:
    assert len(SCRIPTS) >= 16, [s.name for s in SCRIPTS]
    for script in SCRIPTS:
        assert script.read_text().startswith('"""'), f"{script.name} must say which doc page it follows"
        text = script.read_text()
        assert "\nimport runtime as ray\n" in text, f"{script.name} must use `import runtime as ray`"


def _run(script: pathlib.Path, cwd: pathlib.Path) -> tuple[int, str, str]:
    """Run ``script``; past the timeout, SIGABRT makes faulthandler print every thread's stack
    into the captured stderr, so that a hang shows where it hangs."""
    env = _env(cwd / "root")
    env["PYTHONFAULTHANDLER"] = "1"
    with subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            out, err = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=30)
            err += f"\n(no exit within {SCRIPT_TIMEOUT_S} s: stopped with SIGABRT)"
        return proc.returncode, out, err


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_example_script_runs_as_a_user_would(script: pathlib.Path, tmp_path: pathlib.Path) -> None:
    returncode, out, err = _run(script, tmp_path)
    report = (f"{script.name} exited with {returncode}\n"
              f"--- stdout (end) ---\n{_tail(out)}\n--- stderr (end) ---\n{_tail(err, 150)}")
    assert returncode == 0, report
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert last.endswith(" ok"), report
