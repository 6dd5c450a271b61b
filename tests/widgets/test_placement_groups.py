"""Placement groups in the dashboard: the model's section, its table and the text summary.

Pure: ``runtime.state.Change`` objects in, views and HTML out; no cluster, no ipywidgets.
"""

from __future__ import annotations

from runtime.protocol import common_pb2, gcs_pb2
from runtime.state import BundleState, Change, PlacementGroupState, decode_row
from widgets.model import ClusterModel, bundles_text
from widgets.render import placement_groups_table, snapshot_html

N1 = "aa" * 16


def group(gid: str, state: str, *, why: str = "", name: str | None = None, created: float = 1.0,
          nodes: tuple[str | None, ...] = (None, None)) -> PlacementGroupState:
    bundles = tuple(BundleState(i, {"CPU": 1.0}, n) for i, n in enumerate(nodes))
    return PlacementGroupState(placement_group_id=gid, name=name, strategy="SPREAD", state=state, why=why,
                               infeasible=why.startswith("infeasible"), bundles=bundles, create_time=created)


def test_the_row_decodes_from_the_gcs_table() -> None:
    row = gcs_pb2.PlacementGroupRow(placement_group_id=b"\x01" * 16, strategy="PACK", state="CREATED",
                                    name="train", create_time=5.0)
    row.bundles.append(common_pb2.Bundle(index=1, resources={"GPU": 1}, node_id=b"\x02" * 16))
    row.bundles.append(common_pb2.Bundle(index=0, resources={"CPU": 2}))
    g = decode_row("placement_groups", row.SerializeToString())
    assert isinstance(g, PlacementGroupState)
    assert (g.placement_group_id, g.name, g.state, g.create_time, g.ready_time) == ("01" * 16, "train",
                                                                                    "CREATED", 5.0, None)
    assert [(b.index, b.resources, b.node_id) for b in g.bundles] == [(0, {"CPU": 2.0}, None),
                                                                      (1, {"GPU": 1.0}, "02" * 16)]
    assert g.nodes == ["02" * 16]


def test_waiting_groups_come_first_with_why_and_counts_by_state() -> None:
    m = ClusterModel()
    m.apply(Change("placement_groups", "g1", group("g1", "CREATED", nodes=(N1, N1), name="ok")))
    waiting = group("g2", "PENDING", why="infeasible: bundle 0 needs {tpu: 1}")
    m.apply(Change("placement_groups", "g2", waiting))
    m.apply(Change("placement_groups", "g3", group("g3", "REMOVED")))
    m.apply(Change("placement_groups", "g4", group("g4", "PENDING", created=2.0)))
    m.apply(Change("placement_groups", "g4", None))  # deleted
    m.apply(Change("", "", None, snapshot_done=True))
    v = m.view(10.0).placement_groups
    assert v.counts == {"PENDING": 1, "RESCHEDULING": 0, "CREATED": 1, "REMOVED": 1}
    assert [r.placement_group_id for r in v.rows] == ["g2", "g1", "g3"]
    assert v.rows[1].nodes == m.node_label(N1) and v.rows[1].bundles == "2 x {CPU: 1}"
    html = placement_groups_table(v)
    assert "infeasible: bundle 0 needs {tpu: 1}" in html and "SPREAD" in html and ">ok<" in html
    summary = m.view(10.0).summary()
    assert "Placement groups: pending 1, created 1, removed 1" in summary
    assert "pending: g2: infeasible: bundle 0 needs {tpu: 1}" in summary
    assert "Placement groups" in snapshot_html(m.view(10.0), "live")


def test_names_from_the_cluster_are_escaped_and_an_empty_table_says_so() -> None:
    m = ClusterModel()
    m.apply(Change("placement_groups", "g", group("g", "PENDING", name="<b>x</b>", why="<i>")))
    html = placement_groups_table(m.view(1.0).placement_groups)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "&lt;i&gt;" in html
    assert "no placement groups" in placement_groups_table(ClusterModel().view(1.0).placement_groups)


def test_bundles_text_counts_equal_bundles_in_a_row() -> None:
    assert bundles_text([{"CPU": 1}, {"CPU": 1}, {"GPU": 1, "CPU": 2}]) == "2 x {CPU: 1}, {CPU: 2, GPU: 1}"
    assert bundles_text([]) == ""
