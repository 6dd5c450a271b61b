"""The placement policies, one at a time, on hand-made nodes: pure, seeded, no sockets."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from runtime.scheduler.policies import POLICY_NAMES, make_policy
from runtime.scheduler.policies.base import fits, main_resource, remote_bytes, slots
from runtime.scheduler.policies.locality import LocalityPolicy
from runtime.scheduler.policies.spread import SpreadPolicy
from runtime.scheduler.state import InputLocation, NodeView

A, B, C = b"A" * 16, b"B" * 16, b"C" * 16
MB = 1_000_000


def node(node_id: bytes, total: dict[str, float], available: dict[str, float] | None = None,
         queue_length: int = 0) -> NodeView:
    return NodeView(node_id, f"h:{node_id[0]}", total=dict(total),
                    available=dict(total if available is None else available), queue_length=queue_length)


def on(node_id: bytes, size: int) -> InputLocation:
    return InputLocation(object_id=node_id[:1] * 20, size=size, node_ids=frozenset({node_id}))


# ---- shared arithmetic ----

def test_fits_main_resource_and_slots() -> None:
    assert fits({"CPU": 0.1, "x": 0.2}, {"CPU": 0.1, "x": 0.2}) and not fits({"GPU": 1}, {"CPU": 8})
    assert fits({"GPU": 0}, {})  # asking for none of a resource needs none of it
    assert [main_resource(r) for r in ({}, {"CPU": 1}, {"CPU": 1, "GPU": 1}, {"b": 1, "a": 2}, {"CPU": 0})] == [
        "CPU", "CPU", "GPU", "a", "CPU"]
    n = node(A, {"CPU": 8, "GPU": 2})
    assert slots(n, {"CPU": 1}) == 8 and slots(n, {"CPU": 2}) == 4 and slots(n, {"GPU": 1}) == 2
    assert slots(n, {}) == 8 and slots(n, {"GPU": 0.25}) == 8 and slots(node(B, {"GPU": 0.5}), {"GPU": 1}) == 1


def test_remote_bytes_counts_inputs_without_a_copy_on_the_node() -> None:
    inputs = [on(A, 5), on(B, 7), InputLocation(b"x" * 20, 11, frozenset({A, B}))]
    assert (remote_bytes(A, inputs), remote_bytes(B, inputs), remote_bytes(C, inputs)) == (7, 5, 23)


def test_make_policy_by_name() -> None:
    assert POLICY_NAMES == ("locality", "spread")
    assert isinstance(make_policy(), LocalityPolicy)
    assert isinstance(make_policy("spread"), SpreadPolicy)
    custom = make_policy("locality", task_time_s=0.5, bandwidth=10.0)
    assert isinstance(custom, LocalityPolicy) and (custom.task_time_s, custom.bandwidth) == (0.5, 10.0)
    with pytest.raises(ValueError, match="unknown scheduling policy 'pack'; choose one of locality, spread"):
        make_policy("pack")
    with pytest.raises(ValueError, match="task_time_s > 0 and bandwidth > 0"):
        LocalityPolicy(bandwidth=0)


# ---- locality ----

def test_locality_wait_estimate() -> None:
    p = LocalityPolicy(task_time_s=0.010)
    assert p.wait_s(node(A, {"CPU": 4}, {"CPU": 1}, queue_length=50), {"CPU": 1}) == 0.0  # fits now
    assert p.wait_s(node(A, {"CPU": 4}, {"CPU": 0}, queue_length=3), {"CPU": 1}) == pytest.approx(0.010)
    assert p.wait_s(node(A, {"CPU": 4}, {"CPU": 0}, queue_length=3), {"CPU": 2}) == pytest.approx(0.020)
    gpu = node(A, {"CPU": 32, "GPU": 2}, {"CPU": 32, "GPU": 0}, queue_length=1)
    assert p.wait_s(gpu, {"CPU": 1, "GPU": 1}) == pytest.approx(0.010)  # GPUs bound it, not CPUs


def test_locality_transfer_estimate() -> None:
    p = LocalityPolicy(bandwidth=1e9)
    assert p.transfer_s(node(A, {}), [on(B, 50 * MB), on(A, 900 * MB)]) == pytest.approx(0.050)
    assert p.transfer_s(node(B, {}), [on(B, 50 * MB)]) == 0.0


@pytest.mark.parametrize("seed", range(10))
def test_a_large_input_pulls_the_task_to_its_node(seed: int) -> None:
    # B is no less loaded than the others, so its 50 MB input decides.
    nodes = [node(A, {"CPU": 4}, {"CPU": 2}), node(B, {"CPU": 4}, {"CPU": 2}), node(C, {"CPU": 4}, {"CPU": 4})]
    choice = LocalityPolicy(rng=random.Random(seed)).choose(nodes, {"CPU": 1}, [on(B, 50 * MB)])
    assert choice.node.node_id == B and choice.cost == 0.0
    queued = [node(A, {"CPU": 4}, {"CPU": 0}, 8), node(B, {"CPU": 4}, {"CPU": 0}, 8)]
    choice = LocalityPolicy(rng=random.Random(seed)).choose(queued, {"CPU": 1}, [on(B, 50 * MB)])
    assert choice.node.node_id == B


def test_a_long_queue_outweighs_a_small_input() -> None:
    busy_b = node(B, {"CPU": 1}, {"CPU": 0}, queue_length=20)  # ~210 ms before it could start
    free_a = node(A, {"CPU": 1})
    p = LocalityPolicy()
    assert p.choose([free_a, busy_b], {"CPU": 1}, [on(B, 50 * MB)]).node.node_id == A
    assert p.choose([free_a, busy_b], {"CPU": 1}, [on(B, 500 * MB)]).node.node_id == B
    why = p.choose([free_a, busy_b], {"CPU": 1}, [on(B, 50 * MB)]).why
    assert why == "locality: est. wait 0.0 ms + input transfer 50.0 ms"


def test_locality_ties_are_broken_at_random_and_reproducibly() -> None:
    nodes = [node(A, {"CPU": 2}), node(B, {"CPU": 2}), node(C, {"CPU": 2})]

    def picks(seed: int) -> list[bytes]:
        p = LocalityPolicy(rng=random.Random(seed))
        return [p.choose(nodes, {"CPU": 1}, []).node.node_id for _ in range(30)]

    assert picks(7) == picks(7)
    assert set(picks(7)) == {A, B, C}
    # The order the candidates come in does not change a seeded choice.
    p1, p2 = LocalityPolicy(rng=random.Random(3)), LocalityPolicy(rng=random.Random(3))
    assert ([p1.choose(nodes, {}, []).node.node_id for _ in range(10)]
            == [p2.choose(nodes[::-1], {}, []).node.node_id for _ in range(10)])


# ---- spread ----

def test_spread_load() -> None:
    s = SpreadPolicy()
    assert s.load(node(A, {"CPU": 4}, {"CPU": 2}, queue_length=2), {"CPU": 1}) == 1.0
    assert s.load(node(A, {"CPU": 4}), {"CPU": 1}) == 0.0
    assert s.load(node(A, {"CPU": 4}, {"CPU": 0}, queue_length=4), {"CPU": 2}) == 3.0  # (2 + 4) / 2


def test_spread_picks_the_least_loaded_and_ignores_inputs() -> None:
    nodes = [node(A, {"CPU": 8}, {"CPU": 2}), node(B, {"CPU": 4}, {"CPU": 3}), node(C, {"CPU": 4}, {"CPU": 0}, 1)]
    choice = SpreadPolicy(rng=random.Random(0)).choose(nodes, {"CPU": 1}, [on(A, 500 * MB)])
    assert choice.node.node_id == B and choice.why == "spread: load 0.25 per slot (fits now)"


def test_spread_prefers_a_node_where_the_task_fits_now() -> None:
    # A is lightly used but has no free GPU right now; B is busier but can start it at once.
    a = node(A, {"CPU": 16, "GPU": 1}, {"CPU": 16, "GPU": 0})
    b = node(B, {"CPU": 2, "GPU": 4}, {"CPU": 2, "GPU": 1})
    assert SpreadPolicy().choose([a, b], {"GPU": 1}, []).node.node_id == B


def test_spread_ties_are_random() -> None:
    nodes = [node(A, {"CPU": 2}), node(B, {"CPU": 2})]
    p = SpreadPolicy(rng=random.Random(1))
    assert set(Counter(p.choose(nodes, {"CPU": 1}, []).node.node_id for _ in range(30))) == {A, B}
