"""Ray code runs without ``init``: the first call that needs a cluster starts one, as Ray
does, and says so in one line (issue 14, point 1). A script in a subprocess, with its own
session root so that no other cluster on this machine is found."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest

pytestmark = pytest.mark.cluster

SCRIPT = """
import runtime as ray

@ray.remote
def square(x):
    return x * x

@ray.remote
class Counter:
    def __init__(self):
        self.n = 0
    def incr(self):
        self.n += 1
        return self.n

print(ray.get([square.remote(i) for i in range(4)]))
c = Counter.remote()
print(ray.get([c.incr.remote() for _ in range(3)]))
print(ray.get(ray.put("stored")))
"""


def test_a_script_without_init_starts_a_local_cluster_on_first_use(
        tmp_path: pathlib.Path, subprocess_env: Callable[..., dict[str, str]]) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=subprocess_env(CELLRAY_TMPDIR=str(tmp_path / "root")))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[0, 1, 4, 9]", "[1, 2, 3]", "stored"]
    lines = [ln for ln in done.stderr.splitlines() if "runtime.init() was not called" in ln]
    assert len(lines) == 1 and "started a new local cluster" in lines[0]
