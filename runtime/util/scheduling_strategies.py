"""Scheduling strategies, with Ray's names: pass one as ``scheduling_strategy=`` to
``@remote``/``.options()`` of a task or an actor.

- ``"DEFAULT"``: bottom-up. The task runs on the node it was submitted to when it fits
  there and the node is not much busier than its peers; else a global scheduler places it
  (near its inputs, on a node that can start it soonest).
- ``"SPREAD"``: a global scheduler places each task or actor on the least loaded node
  that fits it, so a burst of them spreads across the cluster.
- :class:`NodeAffinitySchedulingStrategy`: on one node (by id, as ``rt.get_runtime_context()
  .get_node_id()`` or ``rt.nodes()`` give it).
- :class:`PlacementGroupSchedulingStrategy`: in a bundle of a placement group
  (``runtime.util.placement_group``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from runtime.util.placement_group import PlacementGroup

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy", "SchedulingStrategyT"]


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (a hex string).

    With ``soft=False`` the task runs only there: it waits while the node is busy, and
    fails with ``TaskUnschedulableError`` (an actor: ``ActorUnschedulableError``) when the
    node is dead or unknown, or raises at once when it can never hold the task. With
    ``soft=True`` it runs there when it can, and elsewhere (placed as by default) when that
    node is dead, unknown, or cannot hold it.

    Examples
    --------
    >>> NodeAffinitySchedulingStrategy("ab" * 16, soft=True)
    NodeAffinitySchedulingStrategy(node_id='abababab…', soft=True)
    """

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        if not isinstance(node_id, str):
            raise TypeError(f"NodeAffinitySchedulingStrategy: node_id must be a hex string "
                            f"(as get_runtime_context().get_node_id() returns), got {node_id!r}")
        try:
            raw = bytes.fromhex(node_id)
        except ValueError:
            raw = b""
        if not raw:
            raise ValueError(f"NodeAffinitySchedulingStrategy: node_id must be a node id in hex "
                             f"(see rt.nodes()), got {node_id!r}")
        self.node_id = node_id
        self.soft = bool(soft)
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id='{self.node_id[:8]}…', soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Run in ``placement_group``: in bundle ``placement_group_bundle_index`` (-1: any
    bundle), on the resources that bundle reserved.

    ``placement_group_capture_child_tasks=True`` makes the tasks and actors this one
    submits (without a strategy of their own) run in the same group.
    """

    def __init__(self, placement_group: PlacementGroup, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None) -> None:
        # Checked by shape, not isinstance: importing placement_group here would close an
        # import circle (placement_group submits tasks through runtime.api, which imports this).
        if not (isinstance(getattr(placement_group, "bundle_count", None), int)
                and callable(getattr(getattr(placement_group, "id", None), "binary", None))):
            raise TypeError("PlacementGroupSchedulingStrategy: placement_group must be a PlacementGroup "
                            f"(from runtime.util.placement_group(...)), got {placement_group!r}")
        index = placement_group_bundle_index
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"placement_group_bundle_index must be an int, got {index!r}")
        count = placement_group.bundle_count
        if index < -1 or index >= count:
            raise ValueError(f"placement_group_bundle_index {index} is out of range: the group has "
                             f"{count} bundle(s) (use 0..{count - 1}, or -1 for any)")
        self.placement_group = placement_group
        self.placement_group_bundle_index = index
        self.placement_group_capture_child_tasks = bool(placement_group_capture_child_tasks)

    def __repr__(self) -> str:
        return (f"PlacementGroupSchedulingStrategy({self.placement_group!r}, "
                f"bundle_index={self.placement_group_bundle_index})")


#: What ``scheduling_strategy=`` accepts.
SchedulingStrategyT = (Literal["DEFAULT", "SPREAD"] | NodeAffinitySchedulingStrategy
                       | PlacementGroupSchedulingStrategy | None)
