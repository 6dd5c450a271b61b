"""A worker's runtime env: read at start-up from the file its node wrote.

The node starts a worker of a runtime env in the env's unpacked working directory, with
its ``env_vars`` set and its paths on ``PYTHONPATH`` (``runtime.node.runtime_envs``), and
names a spec file (``--runtime-env-file``) that holds the env's JSON, those paths and,
when the env could not be set up on the node, why. ``load`` puts the paths first on
``sys.path`` and makes the env this process's default (tasks it submits inherit it);
with an error, the worker runs a ``BrokenEnvExecutor``: the task given to it fails with
``RuntimeEnvSetupError`` naming the reason, instead of waiting for ever, and the worker
exits, so the next task of that env gets a new worker that tries to set it up again.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from runtime.api import _runtime_env
from runtime.exceptions import RuntimeEnvSetupError
from runtime.worker.executor import Executor


def load(path: str) -> str:
    """Apply the spec file at ``path`` to this process; return its error ("" none)."""
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    paths = [str(p) for p in spec.get("paths", ())]
    sys.path[:] = paths + [p for p in sys.path if p not in paths]
    _runtime_env.set_default(_runtime_env.from_text(str(spec.get("runtime_env", ""))))
    return str(spec.get("error", ""))


class BrokenEnvExecutor(Executor):
    """The executor of a worker whose runtime env could not be set up: the function or
    class it would load raises ``RuntimeEnvSetupError`` (so the task, or the actor's
    creation, fails with the reason)."""

    def __init__(self, client: Any, cancelled_early_max: int, error: str) -> None:
        super().__init__(client, cancelled_early_max)
        self.error = error

    def load_function(self, function_id: bytes, name: str) -> Any:
        raise RuntimeEnvSetupError(f"{name}() cannot run on worker pid {os.getpid()}: {self.error}")
