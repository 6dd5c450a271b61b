"""Checks of a task spec that arrives from another process (a client's submit, a task
spilled or forwarded by another node, a call forwarded to an actor's node), before
anything is stored: what is wrong, named by field, or "" when nothing is.

A spec our own API makes always passes; these catch broken or hostile peers, so that one
malformed spec can never poison what the node reports (a negative resource amount in its
load would make the GCS refuse every heartbeat after it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from runtime._ids import TASK_ID_LEN
from runtime.protocol import common_pb2

__all__ = ["MAX_RETURNS", "resources_problem", "spec_problem"]

#: Most returns one task may declare.
MAX_RETURNS = 1 << 16
#: Longest resource name.
_MAX_NAME = 255


def spec_problem(spec: common_pb2.TaskSpec) -> str:
    """What is wrong with ``spec`` ("" when nothing)."""
    if len(spec.task_id) != TASK_ID_LEN:
        return f"spec.task_id must be {TASK_ID_LEN} bytes, got {len(spec.task_id)}"
    is_call = bool(spec.actor_id) and not spec.actor_creation
    if not is_call and not 1 <= len(spec.function_id) <= 64:
        return f"spec.function_id must be 1..64 bytes, got {len(spec.function_id)}"
    for name in ("actor_id", "parent_task_id", "owner_node_id"):
        if len(getattr(spec, name)) not in (0, TASK_ID_LEN):
            return f"spec.{name} must be {TASK_ID_LEN} bytes or empty, got {len(getattr(spec, name))}"
    if not 0 <= spec.num_returns <= MAX_RETURNS:
        return f"spec.num_returns must be 0..{MAX_RETURNS}, got {spec.num_returns}"
    if spec.attempt < 0 or spec.max_retries < -1 or spec.max_calls < 0 or spec.spill_count < 0:
        return (f"spec.attempt, max_calls and spill_count must be >= 0 and max_retries >= -1, got "
                f"{spec.attempt}, {spec.max_calls}, {spec.spill_count} and {spec.max_retries}")
    return resources_problem("spec.resources", spec.resources)


def resources_problem(where: str, resources: Mapping[str, float]) -> str:
    """What is wrong with the resource amounts ``resources`` (named ``where``), "" when nothing:
    names must be printable and 1..255 characters, amounts finite and >= 0."""
    for key, value in resources.items():
        if not key or len(key) > _MAX_NAME or not key.isprintable():
            return f"{where}: names must be 1..{_MAX_NAME} printable characters, got {key[:40]!r}"
        if not math.isfinite(value) or value < 0:
            return f"{where}[{key[:40]!r}] must be a finite amount >= 0, got {value}"
    return ""
