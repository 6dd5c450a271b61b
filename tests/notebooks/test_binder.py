"""binder/ alone makes an environment that runs the quickstart notebook.

A fresh virtual environment (no system site-packages) gets ``pip install -r
binder/requirements.txt``, then ``binder/postBuild`` runs from a copy of the repository,
as repo2docker does. The quickstart then runs in a kernel of *that* environment, from a
directory outside the repository, so every import comes from what postBuild installed.
pip's own cache (``~/.cache/pip`` unless ``PIP_CACHE_DIR`` says otherwise) keeps reruns fast.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.notebooks, pytest.mark.cluster, pytest.mark.timeout(900)]

#: What a fresh clone does not have (or a Binder build would not copy).
_NOT_IN_A_CLONE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                         ".mypy_cache", ".ruff_cache", ".pytest_cache", "test-artifacts")


def _run(cmd: list[str], **kwargs: object) -> str:
    result = subprocess.run(cmd, text=True, capture_output=True, stdin=subprocess.DEVNULL,
                            timeout=600, check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, (f"{' '.join(cmd)} failed ({result.returncode}):\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return str(result.stdout)


def _runner() -> object:
    spec = importlib.util.spec_from_file_location("cellray_notebook_runner", REPO / "notebooks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_binder_environment_runs_the_quickstart(tmp_path: pathlib.Path) -> None:
    clone = tmp_path / "repo"
    shutil.copytree(REPO, clone, ignore=_NOT_IN_A_CLONE)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               CELLRAY_TMPDIR=str(tmp_path / "cellray"))

    _run([python, "-m", "pip", "install", "-q", "-r", str(clone / "binder" / "requirements.txt")],
         env=env, cwd=clone)
    _run(["bash", str(clone / "binder" / "postBuild")], env=env, cwd=clone)

    work = tmp_path / "work"
    work.mkdir()
    where = _run([python, "-c", "import kernel_ext, runtime, widgets; print(kernel_ext.__file__)"],
                 env=env, cwd=work)
    assert where.startswith(str(venv)), f"kernel_ext came from {where!r}, not the new environment"

    runner = _runner()
    nb = runner.execute(clone / "notebooks" / "quickstart.ipynb", python=python,  # type: ignore[attr-defined]
                        cwd=work, timeout=120, env=env)
    text = runner.format_outputs(nb)  # type: ignore[attr-defined]
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, text
    assert "running total  55" in text and "Stopped the cluster at" in text, text
