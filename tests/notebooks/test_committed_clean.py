"""The notebooks in notebooks/ are committed clean, and the dashboard's Run All ends live.

Clean means no outputs and no execution counts, so running a notebook never leaves a
diff to commit by mistake (Jupyter's ``.ipynb_checkpoints/`` is in .gitignore). To clean
one: ``jupyter nbconvert --clear-output --inplace notebooks/NAME.ipynb``. These tests
only read the files; nothing runs.
"""

from __future__ import annotations

import pathlib

import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_to_check() -> None:
    assert {"quickstart.ipynb", "dashboard.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_has_no_outputs_or_execution_counts(path: pathlib.Path) -> None:
    nb = nbformat.read(path, as_version=4)
    dirty = [f"cell {i}: {len(cell.outputs)} output(s), execution count {cell.execution_count}"
             for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, (f"{path.name} is committed with outputs; clean it with `jupyter nbconvert "
                       f"--clear-output --inplace {path.relative_to(REPO)}`:\n" + "\n".join(dirty))


def test_checkpoints_are_ignored() -> None:
    assert ".ipynb_checkpoints/" in (REPO / ".gitignore").read_text().splitlines()


def test_the_dashboard_notebook_ends_with_the_dashboard_live() -> None:
    nb = nbformat.read(REPO / "notebooks" / "dashboard.ipynb", as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    assert any("Dashboard()" in source for source in code)
    # Closing it, or shutting the cluster down, would leave Run All with a blank widget;
    # the last cell says how to do both instead.
    closing = [source for source in code if "dash.close()" in source or "rt.shutdown()" in source]
    assert closing == []
    assert nb.cells[-1].cell_type == "markdown" and "dash.close()" in nb.cells[-1].source
