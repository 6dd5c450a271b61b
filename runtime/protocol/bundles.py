"""The resource names of placement-group bundles, shared by clients, nodes and the GCS.

A committed bundle adds resources to its node under names of its own, as Ray does: for
bundle ``i`` of group ``pg`` (hex id) reserving ``{"CPU": 2}``, the node gains
``CPU_group_i_pg: 2`` (that bundle) and ``CPU_group_pg: 2`` (any bundle of the group),
plus ``bundle_group_i_pg`` and ``bundle_group_pg`` (``BUNDLE_UNITS`` each) so that a task
asking for no resource at all still lands on a node holding its bundle. A task scheduled
in a group asks for the renamed resources (``task_resources``), so nodes and global
schedulers place it like any other task: only a node holding the bundle fits it.

Examples
--------
>>> pg = bytes.fromhex("ab" * 8)
>>> task_resources({"CPU": 1}, pg, 0)
{'CPU_group_0_abababababababab': 1.0, 'bundle_group_0_abababababababab': 0.001}
>>> sorted(reserved_resources({"CPU": 2}, pg, 1))[:2]
['CPU_group_1_abababababababab', 'CPU_group_abababababababab']
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["BUNDLE_UNITS", "TASK_UNITS", "is_bundle_resource", "reserved_resources", "task_resources"]

#: How much of the ``bundle_group_…`` resource a committed bundle adds.
BUNDLE_UNITS = 1000.0
#: How much of it each task in the group asks for.
TASK_UNITS = 0.001

_MARK = "_group_"


def _name(resource: str, pg_id: bytes, index: int) -> str:
    return f"{resource}{_MARK}{index}_{pg_id.hex()}" if index >= 0 else f"{resource}{_MARK}{pg_id.hex()}"


def task_resources(resources: Mapping[str, float], pg_id: bytes, index: int) -> dict[str, float]:
    """What a task needing ``resources`` asks for in bundle ``index`` of group ``pg_id``
    (``index = -1``: any bundle of the group)."""
    out = {_name(k, pg_id, index): float(v) for k, v in resources.items() if v > 0}
    out[_name("bundle", pg_id, index)] = TASK_UNITS
    return out


def reserved_resources(resources: Mapping[str, float], pg_id: bytes, index: int) -> dict[str, float]:
    """What committing bundle ``index`` (reserving ``resources``) adds to its node."""
    out: dict[str, float] = {}
    for k, v in resources.items():
        if v > 0:
            out[_name(k, pg_id, index)] = float(v)
            out[_name(k, pg_id, -1)] = float(v)
    out[_name("bundle", pg_id, index)] = BUNDLE_UNITS
    out[_name("bundle", pg_id, -1)] = BUNDLE_UNITS
    return out


def is_bundle_resource(name: str) -> bool:
    """True for a resource a bundle added (``CPU_group_0_<hex>``), not one the node has."""
    _, sep, tail = name.rpartition("_")
    return _MARK in name and bool(sep) and len(tail) >= 16 and all(c in "0123456789abcdef" for c in tail)
