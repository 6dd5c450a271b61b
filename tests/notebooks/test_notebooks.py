"""Every notebook in notebooks/ runs top to bottom in a real kernel without an error.

They run through ``notebooks/run.py``, the runner ``make demo`` uses, in a kernel of this
Python (its kernelspec is written to a temporary directory). Each notebook stops the
cluster it starts; the kernel is shut down gracefully after it, and the autouse leak check
makes sure nothing it started outlives it.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from types import ModuleType

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

pytestmark = [pytest.mark.notebooks, pytest.mark.cluster]


def load_runner() -> ModuleType:
    """``notebooks/run.py`` as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("cellray_notebook_runner", REPO / "notebooks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def errors_in(nb: object) -> list[str]:
    """Error outputs and tracebacks printed to stderr, cell by cell."""
    found = []
    for i, cell in enumerate(nb.cells):  # type: ignore[attr-defined]
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            elif out.get("name") == "stderr" and "Traceback" in out.get("text", ""):
                found.append(f"cell {i}: traceback on stderr:\n{out['text']}")
    return found


def test_there_are_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS if p.name == "quickstart.ipynb"] == ["quickstart.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    runner = load_runner()
    env = dict(os.environ, CELLRAY_TMPDIR=str(tmp_path / "cellray"))
    env.pop("PYTHONPATH", None)
    nb = runner.execute(path, python=sys.executable, timeout=120, env=env)
    assert not errors_in(nb), "\n".join(errors_in(nb))
    text = runner.format_outputs(nb)
    if path.name == "quickstart.ipynb":
        for expected in ("Started a local cluster at", "(square pid=", "counter at 6",
                         "running total  55", "5.5", "Stopped the cluster at"):
            assert expected in text, f"{expected!r} missing from the quickstart's output:\n{text}"
