"""Utilities beyond the core API, laid out as Ray's ``ray.util``: placement groups and
scheduling strategies.

- ``placement_group(bundles, strategy=..., name=..., lifetime=...)`` reserves bundles of
  resources across nodes, all or nothing; ``PlacementGroup.ready()`` / ``.wait()`` wait for
  it; ``remove_placement_group``, ``get_placement_group(name)``, ``placement_group_table()``
  and ``get_current_placement_group()`` complete the set.
- ``ActorPool(actors)``: spread work over a set of actors (``map``, ``map_unordered``,
  ``submit``/``get_next``...); ``queue.Queue``: a FIFO queue shared by tasks and actors.
- ``scheduling_strategies``: ``PlacementGroupSchedulingStrategy`` (run in a group's bundle)
  and ``NodeAffinitySchedulingStrategy`` (run on one node), for ``scheduling_strategy=``.

Examples
--------
>>> import runtime as rt
>>> from runtime.util import placement_group
>>> from runtime.util.scheduling_strategies import PlacementGroupSchedulingStrategy
>>> pg = placement_group([{"CPU": 1}] * 2, strategy="SPREAD")          # doctest: +SKIP
>>> rt.get(pg.ready())                                                # doctest: +SKIP
>>> f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()  # doctest: +SKIP
"""

from __future__ import annotations

from runtime.util import queue, scheduling_strategies
from runtime.util.actor_pool import ActorPool
from runtime.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = [
    "ActorPool",
    "PlacementGroup",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "queue",
    "remove_placement_group",
    "scheduling_strategies",
]
