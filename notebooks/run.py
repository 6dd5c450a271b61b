"""Run notebooks headless and print what each cell shows: ``python notebooks/run.py [NB ...]``.

With no argument it runs ``notebooks/quickstart.ipynb`` (``make demo`` does). Each
notebook runs top to bottom in a fresh kernel of *this* Python (or ``--python PATH``):
the kernelspec is written to a temporary directory, so a stray ``python3`` kernelspec
elsewhere on the machine is never picked up. The exit status is 1 when a cell raised.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = pathlib.Path(__file__).resolve().parent
KERNEL_NAME = "cellray-python"


def write_kernelspec(root: pathlib.Path, python: str) -> pathlib.Path:
    """A kernelspec named ``cellray-python`` for ``python`` under ``root``; returns ``root``."""
    spec = root / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"cellray ({python})", "language": "python",
    }))
    return root


def execute(path: pathlib.Path, *, python: str = sys.executable, cwd: pathlib.Path | None = None,
            timeout: int = 300, env: dict[str, str] | None = None) -> Any:
    """Execute the notebook at ``path`` in a fresh kernel; the executed notebook.

    Raises ``nbclient.exceptions.CellExecutionError`` at the first cell that raises. The
    kernel is shut down (gracefully, so its cluster stops with it) before this returns.
    """
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="cellray-kernels-") as kernels:
        ksm = KernelSpecManager(kernel_dirs=[str(write_kernelspec(pathlib.Path(kernels), python))])
        km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
        client = NotebookClient(nb, km=km, timeout=timeout, kernel_name=KERNEL_NAME,
                                resources={"metadata": {"path": str(cwd or path.parent)}})
        kwargs: dict[str, Any] = {"env": env} if env is not None else {}
        try:
            # cleanup_kc: shut the kernel down (gracefully, so that its exit stops the cluster
            # it started) and close the channels, even though the manager is ours.
            client.execute(cleanup_kc=True, **kwargs)
        finally:
            if km.has_kernel:  # it failed to start, or the shutdown above failed
                run_sync(km.shutdown_kernel)(now=True)
    return nb


def format_outputs(nb: Any) -> str:
    """Each code cell's source and what it showed, as text."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        source = cell.source.replace("\n", "\n    ... ")
        out.append(f"In [{cell.get('execution_count') or i}]: {source}")
        for o in cell.get("outputs", []):
            kind = o.get("output_type")
            if kind == "stream":
                text = o.get("text", "")
                out.append(text.rstrip("\n") if o.get("name") == "stdout"
                           else "\n".join("[stderr] " + line for line in text.rstrip("\n").split("\n")))
            elif kind in ("execute_result", "display_data"):
                out.append(str(o.get("data", {}).get("text/plain", "")))
            elif kind == "error":
                out.append("\n".join(o.get("traceback", [])))
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", type=pathlib.Path,
                   default=[HERE / "quickstart.ipynb"])
    p.add_argument("--python", default=sys.executable, help="the kernel's Python (default: this one)")
    p.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    args = p.parse_args(argv)
    status = 0
    for path in args.notebooks:
        print(f"==> {path}")
        try:
            nb = execute(path, python=args.python, timeout=args.timeout)
        except CellExecutionError as e:
            print(f"{path}: a cell raised:\n{e}", file=sys.stderr)
            status = 1
            continue
        print(format_outputs(nb))
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet debugpy in the kernel
    sys.exit(main())
