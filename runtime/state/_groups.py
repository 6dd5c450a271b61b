"""The row of ``runtime.state`` for placement groups (the GCS ``placement_groups`` table).

Part of the ``runtime.state`` package: import ``PlacementGroupState`` from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.protocol import gcs_pb2


@dataclass(frozen=True)
class BundleState:
    """One bundle of a placement group."""

    index: int  #: its position in the group (what ``placement_group_bundle_index`` names)
    resources: dict[str, float]  #: what it reserves, as asked
    node_id: str | None  #: hex id of the node holding it; None while not placed


@dataclass(frozen=True)
class PlacementGroupState:
    """A placement group: its bundles, where they are, and why it waits if it does.

    Attributes
    ----------
    placement_group_id : str
        Hex id of the group.
    name : str | None
        The name it was created with, None for an anonymous group.
    strategy : str
        PACK, SPREAD, STRICT_PACK or STRICT_SPREAD.
    state : str
        PENDING (not placed yet), CREATED, RESCHEDULING (a node holding bundles died; they
        are placed again) or REMOVED.
    why : str
        While PENDING or RESCHEDULING: why it is not placed (what it needs, what is free);
        "" otherwise.
    infeasible : bool
        True when no set of live nodes could ever hold it: it waits for a node to join.
    bundles : tuple of BundleState
        Its bundles, in order.
    attempts : int
        Reservations tried so far (two-phase, across nodes).
    job_id : str | None
        Hex id of the job that created it.
    detached : bool
        True when it outlives its job.
    create_time, ready_time : float | None
        When it was created, and when it was last placed.
    """

    placement_group_id: str
    name: str | None
    strategy: str
    state: str
    why: str
    infeasible: bool
    bundles: tuple[BundleState, ...] = field(default=())
    attempts: int = 0
    job_id: str | None = None
    detached: bool = False
    create_time: float | None = None
    ready_time: float | None = None

    @property
    def nodes(self) -> list[str]:
        """Hex ids of the nodes holding its bundles, each once, in bundle order."""
        return list(dict.fromkeys(b.node_id for b in self.bundles if b.node_id))

    @classmethod
    def from_row(cls, row: gcs_pb2.PlacementGroupRow) -> PlacementGroupState:
        """Build from a GCS ``placement_groups`` row."""
        bundles = tuple(BundleState(b.index, dict(b.resources), b.node_id.hex() if b.node_id else None)
                        for b in sorted(row.bundles, key=lambda b: b.index))
        return cls(placement_group_id=row.placement_group_id.hex(), name=row.name or None,
                   strategy=row.strategy, state=row.state, why=row.why, infeasible=row.infeasible,
                   bundles=bundles, attempts=row.attempts, job_id=row.job_id.hex() if row.job_id else None,
                   detached=row.detached, create_time=row.create_time or None,
                   ready_time=row.ready_time or None)
