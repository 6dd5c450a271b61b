"""The placement-group planner (``runtime.gcs.placement``) and the group rows of ``GcsState``.

Pure: nodes are plain ``NodeRoom`` values, decisions are ``Placed`` / ``Unplaced``.
"""

from __future__ import annotations

import pickle

import pytest

from runtime.exceptions import InvalidRequestError
from runtime.gcs.placement import NodeRoom, Placed, Unplaced, plan
from runtime.gcs.state import GcsState
from runtime.protocol import common_pb2, gcs_pb2
from runtime.protocol.states import PlacementGroupState

A, B, C, D = b"a" * 16, b"b" * 16, b"c" * 16, b"d" * 16


def node(node_id: bytes, cpus: float, free: float | None = None, **extra: float) -> NodeRoom:
    total = {"CPU": cpus, **extra}
    return NodeRoom(node_id, total, {**total, "CPU": cpus if free is None else free})


def bundles(*cpus: float) -> dict[int, dict[str, float]]:
    return {i: {"CPU": c} for i, c in enumerate(cpus)}


def placed(decision: Placed | Unplaced) -> dict[int, bytes]:
    assert isinstance(decision, Placed), decision
    return decision.nodes


# ---- PACK ----------------------------------------------------------------------------


def test_pack_puts_everything_on_one_node_when_one_has_room() -> None:
    got = placed(plan("PACK", bundles(1, 1, 1), [node(A, 2), node(B, 4), node(C, 2)]))
    assert set(got.values()) == {B}


def test_pack_uses_as_few_nodes_as_it_must() -> None:
    got = placed(plan("PACK", bundles(2, 2, 1), [node(A, 2), node(B, 3), node(C, 2)]))
    assert sorted(got) == [0, 1, 2]
    assert len(set(got.values())) == 2


def test_pack_prefers_the_node_holding_bundles_of_the_group_already() -> None:
    got = placed(plan("PACK", {1: {"CPU": 1}}, [node(A, 4), node(B, 2)], fixed={0: B}))
    assert got == {1: B}


# ---- SPREAD --------------------------------------------------------------------------


def test_spread_uses_distinct_nodes_when_there_are_enough() -> None:
    got = placed(plan("SPREAD", bundles(1, 1, 1), [node(A, 4), node(B, 4), node(C, 4)]))
    assert len(set(got.values())) == 3


def test_spread_shares_nodes_when_there_are_too_few() -> None:
    got = placed(plan("SPREAD", bundles(1, 1, 1, 1), [node(A, 2), node(B, 2)]))
    assert sorted(list(got.values()).count(n) for n in (A, B)) == [2, 2]


def test_spread_avoids_the_nodes_of_bundles_that_stay() -> None:
    got = placed(plan("SPREAD", {2: {"CPU": 1}}, [node(A, 4), node(B, 4), node(C, 1)], fixed={0: A, 1: B}))
    assert got == {2: C}


# ---- STRICT_PACK ---------------------------------------------------------------------


def test_strict_pack_needs_one_node_for_all() -> None:
    assert set(placed(plan("STRICT_PACK", bundles(1, 2), [node(A, 2), node(B, 3)])).values()) == {B}
    no = plan("STRICT_PACK", bundles(2, 2), [node(A, 2), node(B, 3)])
    assert isinstance(no, Unplaced) and no.infeasible
    assert "STRICT_PACK needs one node with {CPU: 4}" in no.why
    assert "largest has {CPU: 3}" in no.why


def test_strict_pack_waits_when_the_one_node_that_fits_is_busy() -> None:
    no = plan("STRICT_PACK", bundles(2, 2), [node(A, 4, free=1), node(B, 2)])
    assert isinstance(no, Unplaced) and not no.infeasible
    assert no.why.startswith("waiting for resources")


# ---- STRICT_SPREAD -------------------------------------------------------------------


def test_strict_spread_puts_each_bundle_on_its_own_node() -> None:
    got = placed(plan("STRICT_SPREAD", bundles(1, 1, 1), [node(A, 4), node(B, 4), node(C, 4)]))
    assert sorted(got.values()) == [A, B, C]


def test_strict_spread_finds_the_matching_a_greedy_choice_would_miss() -> None:
    # Bundle 0 fits only on A; bundle 1 fits on A and B: a fit exists, with 0 on A.
    nodes = [node(A, 2, gpu=1), node(B, 2)]
    got = placed(plan("STRICT_SPREAD", {0: {"CPU": 1, "gpu": 1}, 1: {"CPU": 1}}, nodes))
    assert got == {0: A, 1: B}
    got = placed(plan("STRICT_SPREAD", {0: {"CPU": 1}, 1: {"CPU": 1, "gpu": 1}}, nodes))
    assert got == {0: B, 1: A}


def test_strict_spread_with_too_few_nodes_is_infeasible_and_says_how_many() -> None:
    no = plan("STRICT_SPREAD", bundles(1, 1, 1), [node(A, 8), node(B, 8)])
    assert isinstance(no, Unplaced) and no.infeasible
    assert "needs 3 different nodes" in no.why and "only 2 node(s) are alive" in no.why


def test_strict_spread_never_reuses_a_node_of_a_bundle_that_stays() -> None:
    no = plan("STRICT_SPREAD", {1: {"CPU": 1}}, [node(A, 8)], fixed={0: A})
    assert isinstance(no, Unplaced) and no.infeasible
    assert placed(plan("STRICT_SPREAD", {1: {"CPU": 1}}, [node(A, 8), node(B, 1)], fixed={0: A})) == {1: B}


# ---- all strategies ------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
def test_a_bundle_no_node_could_ever_hold_is_infeasible(strategy: str) -> None:
    no = plan(strategy, {0: {"CPU": 1}, 1: {"CPU": 1, "tpu": 1}}, [node(A, 4), node(B, 4)])
    assert isinstance(no, Unplaced) and no.infeasible
    assert "bundle 1 needs {CPU: 1, tpu: 1} but no live node has that much" in no.why


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
def test_busy_nodes_make_it_wait_not_infeasible(strategy: str) -> None:
    no = plan(strategy, bundles(1, 1), [node(A, 2, free=0), node(B, 2, free=0.5)])
    assert isinstance(no, Unplaced) and not no.infeasible
    assert "{CPU: 0.5} free now" in no.why


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
def test_no_node_alive(strategy: str) -> None:
    no = plan(strategy, bundles(1), [])
    assert isinstance(no, Unplaced) and no.infeasible and "no node is alive" in no.why


def test_nothing_to_place_is_placed_and_an_unknown_strategy_raises() -> None:
    assert plan("PACK", {}, [node(A, 1)]) == Placed({})
    with pytest.raises(ValueError, match="unknown placement strategy 'TIGHT'"):
        plan("TIGHT", bundles(1), [node(A, 1)])


def test_the_plan_does_not_depend_on_the_order_nodes_come_in() -> None:
    nodes = [node(C, 4), node(A, 4), node(B, 4)]
    for strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        assert plan(strategy, bundles(1, 1, 1), nodes) == plan(strategy, bundles(1, 1, 1), nodes[::-1])


# ---- the placement_groups table --------------------------------------------------------


def group_row(pg_id: bytes = b"p" * 16, strategy: str = "PACK", name: str = "",
              *cpus: float) -> gcs_pb2.PlacementGroupRow:
    row = gcs_pb2.PlacementGroupRow(placement_group_id=pg_id, strategy=strategy, name=name,
                                    namespace="default")
    for c in cpus or (1.0,):
        row.bundles.append(common_pb2.Bundle(resources={"CPU": c}))
    return row


def test_a_new_group_is_pending_with_numbered_unplaced_bundles() -> None:
    state = GcsState(num_shards=2, clock=lambda: 42.0)
    row = group_row(b"p" * 16, "SPREAD", "", 1, 2)
    row.bundles[1].node_id = A  # ignored: nothing is placed at creation
    row.state = "CREATED"
    made = state.create_placement_group(row)
    assert made.state == PlacementGroupState.PENDING and made.create_time == 42.0
    assert [(b.index, b.placement_group_id, b.node_id) for b in made.bundles] == [
        (0, b"p" * 16, b""), (1, b"p" * 16, b"")]
    assert state.get_placement_group(b"p" * 16) == made
    assert [c.table for c in state.take_changes()] == ["placement_groups"]


@pytest.mark.parametrize(("row", "message"), [
    (group_row(b"", "PACK"), "placement_group_id is empty"),
    (group_row(b"p" * 16, "TIGHT"), "unknown strategy 'TIGHT'"),
    (gcs_pb2.PlacementGroupRow(placement_group_id=b"p" * 16, strategy="PACK"), "at least one bundle"),
    (group_row(b"p" * 16, "PACK", "", 0), "bundle 0 must ask for some resource"),
    (group_row(b"p" * 16, "PACK", "", 1, -1), "bundle 1 must ask for some resource"),
])
def test_a_bad_group_is_refused(row: gcs_pb2.PlacementGroupRow, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        GcsState(num_shards=1).create_placement_group(row)


def test_a_name_is_taken_until_its_group_is_removed() -> None:
    state = GcsState(num_shards=2)
    first = state.create_placement_group(group_row(b"p" * 16, "PACK", "train"))
    with pytest.raises(InvalidRequestError, match="named 'train' exists already"):
        state.create_placement_group(group_row(b"q" * 16, "PACK", "train"))
    assert state.find_placement_group("default", "train") == first
    assert state.find_placement_group("other", "train") is None
    first.state = PlacementGroupState.REMOVED
    state.put_placement_group(first)
    assert state.find_placement_group("default", "train") is None
    state.create_placement_group(group_row(b"q" * 16, "PACK", "train"))
    assert [g.placement_group_id for g in state.placement_groups()] == [b"p" * 16, b"q" * 16]


# ---- the user's side: arguments checked before anything is sent; `cellray status` ------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bundles": []}, "non-empty list of bundles"),
    ({"bundles": {"CPU": 1}}, "non-empty list of bundles"),
    ({"bundles": [{"CPU": 1}, "CPU"]}, "bundle 1 must be a dict"),
    ({"bundles": [{"CPU": 0, "GPU": 0}]}, "bundle 0 asks for nothing"),
    ({"bundles": [{}]}, "bundle 0 asks for nothing"),
    ({"bundles": [{"CPU": -1}]}, "the amount of 'CPU' must be a number >= 0"),
    ({"bundles": [{"CPU": True}]}, "the amount of 'CPU' must be a number >= 0"),
    ({"bundles": [{"CPU": 1}], "strategy": "pack"}, "strategy must be one of 'PACK'"),
    ({"bundles": [{"CPU": 1}], "lifetime": "forever"}, "lifetime must be None"),
    ({"bundles": [{"CPU": 1}], "_max_cpu_fraction_per_node": 0}, r"must be in \(0, 1\]"),
])
def test_placement_group_arguments_are_checked_first(kwargs: dict[str, object], message: str) -> None:
    from runtime.util import placement_group

    with pytest.raises(ValueError, match=message):
        placement_group(**kwargs)  # type: ignore[arg-type]


def test_the_strategy_needs_a_group_and_a_bundle_in_range() -> None:
    from runtime.util.placement_group import PlacementGroup, PlacementGroupID
    from runtime.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = PlacementGroup(PlacementGroupID(b"p" * 16), [{"CPU": 1.0}, {"CPU": 1.0}])
    assert PlacementGroupSchedulingStrategy(pg, 1).placement_group_bundle_index == 1
    with pytest.raises(ValueError, match="out of range: the group has 2 bundle"):
        PlacementGroupSchedulingStrategy(pg, 2)
    with pytest.raises(TypeError, match="must be a PlacementGroup"):
        PlacementGroupSchedulingStrategy("pg", 0)  # type: ignore[arg-type]
    assert pg.bundle_count == 2 and pg.bundle_specs == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert pickle.loads(pickle.dumps(pg)) == pg and pg.id.hex() == "70" * 16


def test_status_hides_bundle_resources_and_counts_groups() -> None:
    from runtime.cluster.status import ClusterStatus, NodeStatus, format_status

    node = NodeStatus(node_id="ab" * 16, address="127.0.0.1:4001", alive=True, death_cause="",
                      total={"CPU": 2, f"CPU_group_0_{'cd' * 16}": 1, f"bundle_group_{'cd' * 16}": 1000},
                      available={"CPU": 1})
    text = format_status(ClusterStatus(address="a:1", session_dir="/s", gcs_pid=7, num_shards=1,
                                       nodes=[node], jobs_total=1, jobs_running=1,
                                       placement_groups={"CREATED": 2, "PENDING": 1}))
    assert "_group_" not in text and "CPU 1/2" in text
    assert text.splitlines()[-1] == "placement groups: 3 (2 created, 1 pending)"
