"""The committed runtime/protocol/*_pb2*.py and *.pyi match their .proto files."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import runtime.protocol

ROOT = pathlib.Path(runtime.protocol.__file__).resolve().parents[2]


def test_generated_protocol_modules_are_fresh() -> None:
    # The generator only reads the tree and writes to a temporary directory with --check.
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.protocol.generate", "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, (
        f"generated protocol modules are stale or the generator failed "
        f"(exit {proc.returncode}); run `make proto` and commit the result.\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
