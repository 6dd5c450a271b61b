"""``scheduling_strategy=`` of tasks and actors: checked, and written into the task spec.

A placement-group strategy renames the task's resources to its bundle's
(``runtime.protocol.bundles``), so only a node holding the bundle fits it; the strategy
itself is kept in the spec for the runtime context and for child tasks it captures.
"""

from __future__ import annotations

from typing import Any

from runtime.protocol import bundles, common_pb2
from runtime.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = ["DEFAULT", "NODE_AFFINITY", "PLACEMENT_GROUP", "SPREAD", "apply", "check"]

DEFAULT, SPREAD, NODE_AFFINITY, PLACEMENT_GROUP = "DEFAULT", "SPREAD", "NODE_AFFINITY", "PLACEMENT_GROUP"


def check(strategy: Any) -> None:
    """Raise ``TypeError``/``ValueError`` for a value ``scheduling_strategy=`` does not take."""
    if strategy is None or isinstance(strategy, (NodeAffinitySchedulingStrategy,
                                                 PlacementGroupSchedulingStrategy)):
        return
    if isinstance(strategy, str):
        if strategy in (DEFAULT, SPREAD):
            return
        raise ValueError(f"scheduling_strategy must be 'DEFAULT', 'SPREAD' or a strategy object from "
                         f"runtime.util.scheduling_strategies, got {strategy!r}")
    raise TypeError("scheduling_strategy must be 'DEFAULT', 'SPREAD', a NodeAffinitySchedulingStrategy or "
                    f"a PlacementGroupSchedulingStrategy, got {type(strategy).__name__}")


def apply(spec: common_pb2.TaskSpec, strategy: Any, parent: common_pb2.TaskSpec | None) -> None:
    """Write ``strategy`` into ``spec`` (resources set already). Without one, a task inherits
    its parent's placement group when the parent captures child tasks."""
    out = spec.strategy
    if strategy is None or strategy == DEFAULT:
        inherited = parent.strategy if parent is not None else None
        if inherited is not None and inherited.kind == PLACEMENT_GROUP and inherited.capture_child_tasks:
            _in_group(spec, inherited.placement_group_id, -1, capture=True)
        return
    if isinstance(strategy, str):
        out.kind = strategy
    elif isinstance(strategy, NodeAffinitySchedulingStrategy):
        out.kind = NODE_AFFINITY
        out.node_id = bytes.fromhex(strategy.node_id)
        out.soft = strategy.soft
    elif isinstance(strategy, PlacementGroupSchedulingStrategy):
        _in_group(spec, strategy.placement_group.id.binary(), strategy.placement_group_bundle_index,
                  capture=strategy.placement_group_capture_child_tasks)


def _in_group(spec: common_pb2.TaskSpec, pg_id: bytes, index: int, *, capture: bool) -> None:
    out = spec.strategy
    out.kind = PLACEMENT_GROUP
    out.placement_group_id = pg_id
    out.bundle_index = index
    out.capture_child_tasks = capture
    renamed = bundles.task_resources(dict(spec.resources), pg_id, index)
    spec.ClearField("resources")
    spec.resources.update(renamed)
