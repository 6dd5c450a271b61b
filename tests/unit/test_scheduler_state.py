"""ClusterView, driven with NodeRows as the GCS publishes them: no sockets, no sleeps."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from runtime.protocol import common_pb2, gcs_pb2
from runtime.scheduler.policies import make_policy
from runtime.scheduler.state import (
    ClusterView,
    InputLocation,
    Placement,
    PlacementAttempts,
    Unschedulable,
    Wait,
    check_resources,
)

A, B, C = b"A" * 16, b"B" * 16, b"C" * 16
MB = 1_000_000


def row(node_id: bytes, total: dict[str, float], available: dict[str, float] | None = None,
        queue_length: int = 0, alive: bool = True, heartbeat: float = 1.0) -> gcs_pb2.NodeRow:
    load = common_pb2.NodeLoad(total=total, available=total if available is None else available,
                               queue_length=queue_length)
    return gcs_pb2.NodeRow(node_id=node_id, address=f"127.0.0.1:{7000 + node_id[0]}", alive=alive,
                           load=load, last_heartbeat=heartbeat)


def view_of(*rows: gcs_pb2.NodeRow, policy: str = "locality", seed: int = 0) -> ClusterView:
    view = ClusterView(make_policy(policy, rng=random.Random(seed)))
    for r in rows:
        view.update(r)
    return view


def test_rows_become_node_views() -> None:
    view = view_of(row(A, {"CPU": 4, "GPU": 1}, {"CPU": 1}, queue_length=3, heartbeat=12.5))
    node = view.node(A)
    assert node is not None
    assert (node.address, node.alive, node.total, node.available, node.queue_length, node.last_heartbeat) == (
        "127.0.0.1:7065", True, {"CPU": 4, "GPU": 1}, {"CPU": 1}, 3, 12.5)
    assert len(view) == 1 and view.node(B) is None


def test_feasible_means_alive_and_total_fits() -> None:
    view = view_of(row(A, {"CPU": 4}, {"CPU": 0}), row(B, {"CPU": 1}), row(C, {"CPU": 8}, alive=False))
    assert [n.node_id for n in view.feasible({"CPU": 2})] == [A]  # busy now, but it could run it
    assert {n.node_id for n in view.feasible({"CPU": 1})} == {A, B}
    assert {n.node_id for n in view.feasible({})} == {A, B}
    assert view.feasible({"CPU": 16}) == []
    assert view.feasible({"GPU": 1}) == []


def test_a_resource_only_one_node_has_goes_to_that_node() -> None:
    view = view_of(row(A, {"CPU": 8}), row(B, {"CPU": 1, "sim": 2}, {"CPU": 0, "sim": 0}, queue_length=9),
                   row(C, {"CPU": 8}))
    for _ in range(5):
        placement = view.place({"CPU": 1, "sim": 1})
        assert placement is not None and placement.node_id == B


def test_nothing_feasible_or_all_excluded_places_nothing() -> None:
    view = view_of(row(A, {"CPU": 2}), row(B, {"CPU": 2}))
    assert view.place({"GPU": 1}) is None
    assert view.place({"CPU": 1}, exclude={A, B}) is None
    placement = view.place({"CPU": 1}, exclude={A})
    assert placement is not None and placement.node_id == B
    assert "none has {'GPU': 1}" in view.describe_infeasible({"GPU": 1})
    assert view_of().describe_infeasible({"CPU": 1}) == "no live node is known"


def test_place_charges_the_node_until_its_next_row() -> None:
    view = view_of(row(A, {"CPU": 4, "GPU": 2}, queue_length=1))
    placement = view.place({"CPU": 1, "GPU": 0.5})
    assert placement is not None and placement.address == "127.0.0.1:7065" and placement.why.startswith("locality")
    node = view.node(A)
    assert node is not None
    assert (node.available, node.queue_length, node.charged) == ({"CPU": 3, "GPU": 1.5}, 2, 1)
    view.update(row(A, {"CPU": 4, "GPU": 2}, {"CPU": 2, "GPU": 2}, heartbeat=2.0))  # the next heartbeat
    node = view.node(A)
    assert node is not None
    assert (node.available, node.queue_length, node.charged) == ({"CPU": 2, "GPU": 2}, 0, 0)


@pytest.mark.parametrize("policy", ["locality", "spread"])
@pytest.mark.parametrize("seed", range(5))
def test_optimistic_charging_spreads_a_burst_over_free_slots(policy: str, seed: int) -> None:
    view = view_of(row(A, {"CPU": 2}), row(B, {"CPU": 2}), row(C, {"CPU": 2}, {"CPU": 0}, queue_length=4),
                   policy=policy, seed=seed)
    burst = [view.place({"CPU": 1}) for _ in range(4)]
    assert Counter(p.node_id for p in burst if p is not None) == {A: 2, B: 2}


@pytest.mark.parametrize("policy", ["locality", "spread"])
def test_optimistic_charging_spreads_a_burst_over_queues(policy: str) -> None:
    view = view_of(row(A, {"CPU": 4}, {"CPU": 0}), row(B, {"CPU": 4}, {"CPU": 0}), policy=policy)
    burst = [view.place({"CPU": 1}) for _ in range(6)]
    assert Counter(p.node_id for p in burst if p is not None) == {A: 3, B: 3}


def test_a_charged_node_is_full_for_the_next_placement() -> None:
    # Two free slots, no heartbeat in between: the second task must not follow the first.
    view = view_of(row(A, {"CPU": 1}), row(B, {"CPU": 1}))
    first = view.place({"CPU": 1})
    assert first is not None
    second = view.place({"CPU": 1})
    assert second is not None and second.node_id != first.node_id


def test_refund_undoes_a_charge_unless_a_newer_row_came() -> None:
    view = view_of(row(A, {"CPU": 2}))
    placement = view.place({"CPU": 1})
    assert placement is not None
    view.refund(placement)
    node = view.node(A)
    assert node is not None and (node.available, node.queue_length, node.charged) == ({"CPU": 2}, 0, 0)
    placement = view.place({"CPU": 1})
    assert placement is not None
    view.update(row(A, {"CPU": 2}, {"CPU": 1}, queue_length=1))
    view.refund(placement)  # the new row already tells the truth: nothing to undo
    node = view.node(A)
    assert node is not None and (node.available, node.queue_length) == ({"CPU": 1}, 1)


def test_versions_count_changes_from_the_gcs() -> None:
    view = view_of()
    assert (view.version, view.row_version(A)) == (0, 0)
    view.apply(A, row(A, {"CPU": 1}).SerializeToString())
    assert (view.version, view.row_version(A)) == (1, 1)
    view.place({"CPU": 1})  # a charge is not news from the GCS
    assert (view.version, view.row_version(A)) == (1, 1)
    view.apply(A, b"", deleted=True)
    assert view.node(A) is None and view.row_version(A) == 2 and view.version == 2
    view.remove(B)  # unknown: nothing changes
    assert view.version == 2


def test_dead_rows_stay_but_are_never_placed_on() -> None:
    view = view_of(row(A, {"CPU": 1}))
    view.update(row(A, {"CPU": 1}, alive=False))
    assert view.node(A) is not None and view.place({"CPU": 1}) is None


def test_reset_replaces_the_whole_picture() -> None:
    view = view_of(row(A, {"CPU": 1}), row(B, {"CPU": 1}))
    before = view.version
    view.reset([row(B, {"CPU": 2}), row(C, {"CPU": 3})])
    assert sorted(n.node_id for n in view.nodes()) == [B, C]
    assert view.version > before
    node = view.node(B)
    assert node is not None and node.total == {"CPU": 2}


def test_inputs_may_be_dataclasses_or_protos() -> None:
    from runtime.protocol import scheduler_pb2
    view = view_of(row(A, {"CPU": 2}), row(B, {"CPU": 2}))
    as_proto = scheduler_pb2.InputLocation(object_id=b"o" * 20, size=50 * MB, node_ids=[B])
    as_data = InputLocation(b"o" * 20, 50 * MB, frozenset({B}))
    for inputs in ([as_proto], [as_data]):
        placement = view.place({"CPU": 1}, inputs)
        assert placement is not None and placement.node_id == B


@pytest.mark.parametrize("bad", [{"CPU": -1.0}, {"CPU": float("nan")}, {"GPU": float("inf")}])
def test_bad_resource_amounts_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        check_resources(bad)
    with pytest.raises(ValueError, match="finite and >= 0"):
        view_of(row(A, {"CPU": 1})).place(bad)


# ---- one task's attempts ----

def test_attempts_place_the_task_back_on_its_home_when_it_is_the_best_place() -> None:
    # A spilled the task, but its 500 MB input is on A and B is as busy: back to A.
    view = view_of(row(A, {"CPU": 4}, {"CPU": 0}, queue_length=9),
                   row(B, {"CPU": 4}, {"CPU": 0}, queue_length=9))
    step = PlacementAttempts(view, {"CPU": 1}, [InputLocation(b"o" * 20, 500 * MB, frozenset({A}))], home=A).next()
    assert isinstance(step, Placement) and step.node_id == A


def test_attempts_prefer_a_free_node_to_the_busy_home() -> None:
    view = view_of(row(A, {"CPU": 4}, {"CPU": 0}, queue_length=9), row(B, {"CPU": 4}))
    step = PlacementAttempts(view, {"CPU": 1}, home=A).next()
    assert isinstance(step, Placement) and step.node_id == B


def test_only_the_home_can_run_it_so_it_goes_back_there() -> None:
    view = view_of(row(A, {"CPU": 4, "sim": 1}), row(B, {"CPU": 4}))
    step = PlacementAttempts(view, {"sim": 1}, home=A).next()
    assert isinstance(step, Placement) and step.node_id == A


def test_after_every_other_node_failed_the_home_runs_it() -> None:
    view = view_of(row(A, {"CPU": 4}, {"CPU": 0}, queue_length=40), row(B, {"CPU": 4}))
    attempts = PlacementAttempts(view, {"CPU": 1}, home=A)
    step = attempts.next()
    assert isinstance(step, Placement) and step.node_id == B
    attempts.failed(step)  # rather than wait for B's next heartbeat, A runs it
    again = attempts.next()
    assert isinstance(again, Placement) and again.node_id == A


def test_spread_picks_the_least_loaded_node_even_against_the_view_policy() -> None:
    view = view_of(row(A, {"CPU": 4}, {"CPU": 1}), row(B, {"CPU": 4}, {"CPU": 3}), row(C, {"CPU": 4}, {"CPU": 2}))
    spread = common_pb2.SchedulingStrategy(kind="SPREAD")
    picks = [PlacementAttempts(view, {"CPU": 1}, home=A, strategy=spread).next() for _ in range(3)]
    nodes = [p.node_id for p in picks if isinstance(p, Placement)]
    assert nodes[:2] == [B, C]  # B has 1 in use; then B (charged) is busier than C


def test_node_affinity_goes_to_its_node_even_when_busy() -> None:
    view = view_of(row(A, {"CPU": 4}), row(B, {"CPU": 1}, {"CPU": 0}, queue_length=5))
    hard = common_pb2.SchedulingStrategy(kind="NODE_AFFINITY", node_id=B)
    step = PlacementAttempts(view, {"CPU": 1}, home=A, strategy=hard).next()
    assert isinstance(step, Placement) and step.node_id == B and "affinity" in step.why


def test_hard_affinity_to_a_dead_or_unknown_node_is_unschedulable_and_soft_goes_elsewhere() -> None:
    view = view_of(row(A, {"CPU": 4}), row(B, {"CPU": 4}, alive=False))
    for target, state in ((B, "is dead"), (b"Z" * 16, "is not in the cluster")):
        hard = common_pb2.SchedulingStrategy(kind="NODE_AFFINITY", node_id=target)
        step = PlacementAttempts(view, {"CPU": 1}, home=A, strategy=hard).next()
        assert isinstance(step, Unschedulable) and state in step.why
        soft = common_pb2.SchedulingStrategy(kind="NODE_AFFINITY", node_id=target, soft=True)
        placed = PlacementAttempts(view, {"CPU": 1}, home=A, strategy=soft).next()
        assert isinstance(placed, Placement) and placed.node_id == A


def test_hard_affinity_to_a_node_too_small_waits() -> None:
    view = view_of(row(A, {"CPU": 4, "GPU": 1}), row(B, {"CPU": 4}))
    hard = common_pb2.SchedulingStrategy(kind="NODE_AFFINITY", node_id=B)
    step = PlacementAttempts(view, {"GPU": 1}, home=A, strategy=hard).next()
    assert isinstance(step, Wait) and "in total" in step.why
    soft = common_pb2.SchedulingStrategy(kind="NODE_AFFINITY", node_id=B, soft=True)
    placed = PlacementAttempts(view, {"GPU": 1}, home=B, strategy=soft).next()
    assert isinstance(placed, Placement) and placed.node_id == A


def test_attempts_wait_when_no_node_fits() -> None:
    view = view_of(row(A, {"CPU": 4}))
    step = PlacementAttempts(view, {"GPU": 1}, home=A).next()
    assert isinstance(step, Wait) and "none has {'GPU': 1} in total" in step.why


def test_a_failed_node_is_skipped_until_its_next_row() -> None:
    # The home A cannot run the task (no GPU): when B and C both fail, it waits for news.
    view = view_of(row(A, {"CPU": 4}), row(B, {"CPU": 4, "GPU": 1}), row(C, {"CPU": 4, "GPU": 1}))
    attempts = PlacementAttempts(view, {"GPU": 1}, [InputLocation(b"o" * 20, 50 * MB, frozenset({B}))], home=A)
    first = attempts.next()
    assert isinstance(first, Placement) and first.node_id == B
    attempts.failed(first)
    node = view.node(B)
    assert node is not None and node.charged == 0  # refunded
    second = attempts.next()
    assert isinstance(second, Placement) and second.node_id == C
    attempts.failed(second)
    waiting = attempts.next()
    assert isinstance(waiting, Wait) and "failed to take it" in waiting.why
    view.update(row(B, {"CPU": 4, "GPU": 1}, heartbeat=2.0))  # news from B: worth another try
    again = attempts.next()
    assert isinstance(again, Placement) and again.node_id == B


def test_a_large_cluster_scores_a_sample_plus_the_input_holders_and_still_finds_a_needle() -> None:
    view = ClusterView(make_policy("locality", rng=random.Random(1)), max_candidates=8, rng=random.Random(2))
    ids = [i.to_bytes(2, "big") * 8 for i in range(200)]
    for node_id in ids:
        view.update(row(node_id, {"CPU": 4}))
    holder = ids[123]
    step = PlacementAttempts(view, {"CPU": 1}, [InputLocation(b"o" * 20, 500 * MB, frozenset({holder}))]).next()
    assert isinstance(step, Placement) and step.node_id == holder  # always among the candidates
    gpu = ids[77]
    view.update(row(gpu, {"CPU": 4, "GPU": 1}))
    step = PlacementAttempts(view, {"GPU": 1}).next()
    assert isinstance(step, Placement) and step.node_id == gpu  # found even outside the sample
    with pytest.raises(ValueError, match="max_candidates"):
        ClusterView(max_candidates=0)


def test_the_homes_load_sent_with_a_spill_replaces_its_stale_row() -> None:
    # A's last row says it is free; the load it spilled with says it is busy: B wins.
    view = view_of(row(A, {"CPU": 4}), row(B, {"CPU": 4}, {"CPU": 1}, queue_length=0))
    busy = common_pb2.NodeLoad(total={"CPU": 4}, available={"CPU": 0}, queue_length=6)
    inputs = [InputLocation(b"o" * 20, 10 * MB, frozenset({A, B}))]
    step = PlacementAttempts(view, {"CPU": 1}, inputs, home=A, home_load=busy).next()
    assert isinstance(step, Placement) and step.node_id == B
    node = view.node(A)
    assert node is not None and (node.available, node.queue_length) == ({"CPU": 0.0}, 6)
