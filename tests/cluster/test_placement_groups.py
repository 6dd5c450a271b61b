"""Placement groups on real clusters of node processes: each strategy, tasks and actors in
bundles, infeasible groups, removal, and a node holding bundles killed.

Tasks never sleep to let time pass: one that must keep running waits for a flag file; the
tests wait on state (``wait_for``, ``pg.wait``), never on time.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time
from collections.abc import Iterator

import pytest

import runtime as rt
from runtime import config, state
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.exceptions import TaskCancelledError
from runtime.testing.wait import wait_for
from runtime.util import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from runtime.util.scheduling_strategies import PlacementGroupSchedulingStrategy

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

FAST = config.load(heartbeat_ms=100, node_timeout_ms=1500)


def _start(tmp_path: pathlib.Path, n: int, cpus: float = 2, namespace: str | None = None) -> LocalCluster:
    cluster = LocalCluster([NodeSpec(num_cpus=cpus) for _ in range(n)], settings=FAST,
                           session_root=tmp_path / "s").start()
    try:
        rt.init(address=cluster.address, token_file=str(cluster.token_file), namespace=namespace)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three nodes of 2 CPUs, shared by the tests that kill nothing (each removes its groups)."""
    assert not rt.is_initialized(), "a previous test left rt initialized"
    cluster = _start(tmp_path_factory.mktemp("pg"), 3)
    try:
        yield cluster
    finally:
        rt.shutdown()
        cluster.stop()


@rt.remote(num_cpus=1)
def where(flag: str | None = None) -> str:
    while flag is not None and not os.path.exists(flag):
        time.sleep(0.01)  # a flag poll, not a wait for time to pass
    return rt.get_runtime_context().get_node_id()


@rt.remote(num_cpus=1, max_retries=0)
def hold(started: str, flag: str) -> None:
    pathlib.Path(started).touch()
    while not os.path.exists(flag):
        time.sleep(0.01)  # a flag poll, not a wait for time to pass


@rt.remote(num_cpus=1)
def current_group() -> tuple[str | None, str]:
    pg = get_current_placement_group()
    return (pg.id.hex() if pg is not None else None), rt.get_runtime_context().get_node_id()


@rt.remote(num_cpus=1)
class Where:
    def node(self) -> str:
        return rt.get_runtime_context().get_node_id()

    def group(self) -> str | None:
        pg = get_current_placement_group()
        return pg.id.hex() if pg is not None else None


def in_bundle(pg: PlacementGroup, index: int = -1, capture: bool = False) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index,
                                            placement_group_capture_child_tasks=capture)


def bundle_nodes(pg: PlacementGroup) -> dict[int, str]:
    return dict(placement_group_table(pg)["bundles_to_node_id"])


def node_ids(cluster: LocalCluster) -> list[str]:
    return [info["node_id"] for info in cluster.node_info]


def _seen_states(pg: PlacementGroup) -> tuple[list[str], state.Subscription]:
    seen: list[str] = []
    lock = threading.Lock()

    def on_change(change: state.Change) -> None:
        value = change.value
        if isinstance(value, state.PlacementGroupState) and value.placement_group_id == pg.id.hex():
            with lock:
                seen.append(value.state)

    return seen, state.subscribe(["placement_groups"], on_change)


@pytest.mark.slow
def test_a_killed_node_s_bundles_are_placed_again_on_another(tmp_path: pathlib.Path) -> None:
    assert not rt.is_initialized()
    cluster = _start(tmp_path, 4, cpus=1)
    try:
        driver_node = node_ids(cluster)[0]
        pg = placement_group([{"CPU": 1}] * 2, strategy="STRICT_SPREAD")
        seen, sub = _seen_states(pg)
        try:
            assert pg.wait(timeout_seconds=60)
            before = bundle_nodes(pg)
            # Kill a node holding a bundle (not the driver's, whose death would end the driver).
            index, victim = next((i, n) for i, n in sorted(before.items()) if n != driver_node)
            cluster.nodes[node_ids(cluster).index(victim)].popen.send_signal(signal.SIGKILL)

            def moved() -> dict[int, str] | None:
                entry = placement_group_table(pg)
                placed = entry["bundles_to_node_id"]
                ok = entry["state"] == "CREATED" and len(placed) == 2 and victim not in placed.values()
                return placed if ok else None
            after = wait_for(moved, timeout=60, what="the lost bundle placed on another node")
            other = 1 - index
            assert after[other] == before[other]  # the bundle on the live node stayed
            assert after[index] not in (victim, before[other])
            wait_for(lambda: "RESCHEDULING" in seen, timeout=30, what="a RESCHEDULING row published")
            ran_on = rt.get(where.options(scheduling_strategy=in_bundle(pg, index)).remote(), timeout=60)
            assert ran_on == after[index]
        finally:
            sub.close()
            remove_placement_group(pg)
    finally:
        rt.shutdown()
        cluster.stop()


def test_a_drivers_groups_go_with_it_unless_detached(tmp_path: pathlib.Path) -> None:
    assert not rt.is_initialized()
    cluster = _start(tmp_path, 3, cpus=1, namespace="groups")  # named groups live in a namespace
    try:
        mine = placement_group([{"CPU": 1}], strategy="PACK")
        kept = placement_group([{"CPU": 1}], strategy="PACK", lifetime="detached", name="kept")
        assert mine.wait(timeout_seconds=60) and kept.wait(timeout_seconds=60)
        rt.shutdown()  # the job finishes
        rt.init(address=cluster.address, token_file=str(cluster.token_file), namespace="groups")
        wait_for(lambda: placement_group_table(mine)["state"] == "REMOVED", timeout=30,
                 what="the finished job's group removed")
        assert get_placement_group("kept") == kept
        assert placement_group_table(kept)["state"] == "CREATED"
        remove_placement_group(kept)
    finally:
        rt.shutdown()
        cluster.stop()


# ---- the tests below share one cluster (module-scoped): they kill nothing ----


@pytest.mark.parametrize("strategy", ["PACK", "STRICT_PACK"])
def test_pack_strategies_put_the_group_on_one_node(three_nodes: LocalCluster, strategy: str) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy=strategy)
    try:
        assert rt.get(pg.ready(), timeout=60) == pg
        placed = bundle_nodes(pg)
        assert len(set(placed.values())) == 1 and set(placed.values()) <= set(node_ids(three_nodes))
        ran_on = rt.get([where.options(scheduling_strategy=in_bundle(pg, i)).remote() for i in (0, 1)],
                        timeout=60)
        assert ran_on == [placed[0], placed[1]]
    finally:
        remove_placement_group(pg)


@pytest.mark.parametrize("strategy", ["SPREAD", "STRICT_SPREAD"])
def test_spread_strategies_put_each_bundle_on_its_own_node(three_nodes: LocalCluster, strategy: str) -> None:
    pg = placement_group([{"CPU": 1}] * 3, strategy=strategy)
    try:
        assert pg.wait(timeout_seconds=60)
        placed = bundle_nodes(pg)
        assert sorted(placed.values()) == sorted(node_ids(three_nodes))
        ran_on = rt.get([where.options(scheduling_strategy=in_bundle(pg, i)).remote() for i in range(3)],
                        timeout=60)
        assert ran_on == [placed[i] for i in range(3)]
        table = placement_group_table()[pg.id.hex()]
        assert table["state"] == "CREATED" and table["stats"]["scheduling_state"] == "FINISHED"
        assert [g.state for g in state.list_placement_groups() if g.placement_group_id == pg.id.hex()] == [
            "CREATED"]
    finally:
        remove_placement_group(pg)


def test_actors_and_tasks_in_a_group_run_on_their_bundles_node(three_nodes: LocalCluster) -> None:
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD", name="actors-here")
    try:
        assert pg.wait(timeout_seconds=60)
        assert get_placement_group("actors-here") == pg
        placed = bundle_nodes(pg)
        # A task in the group sees it (and the driver is in none).
        group, node = rt.get(current_group.options(scheduling_strategy=in_bundle(pg, 1)).remote(),
                             timeout=60)
        assert (group, node) == (pg.id.hex(), placed[1])
        assert get_current_placement_group() is None
        # Actors hold their bundle's CPU for life.
        actors = [Where.options(scheduling_strategy=in_bundle(pg, i)).remote() for i in range(3)]
        assert rt.get([a.node.remote() for a in actors], timeout=60) == [placed[i] for i in range(3)]
        # Its methods run in the group too, and see it.
        assert rt.get(actors[0].group.remote(), timeout=60) == pg.id.hex()
        for a in actors:
            rt.kill(a)
    finally:
        remove_placement_group(pg)


def test_an_infeasible_group_waits_with_a_reason_and_blocks_nothing(three_nodes: LocalCluster) -> None:
    big = placement_group([{"CPU": 2}, {"CPU": 2}], strategy="STRICT_PACK")
    try:
        assert big.wait(timeout_seconds=1) is False
        entry = placement_group_table(big)
        assert entry["state"] == "PENDING" and entry["stats"]["scheduling_state"] == "INFEASIBLE"
        assert "STRICT_PACK needs one node with {CPU: 4}" in entry["why"]
        (row,) = [g for g in state.list_placement_groups(state="pending")
                  if g.placement_group_id == big.id.hex()]
        assert row.infeasible and row.why == entry["why"]
        # Other work goes on, and so do other groups.
        assert rt.get(where.remote(), timeout=60) in node_ids(three_nodes)
        small = placement_group([{"CPU": 1}], strategy="STRICT_PACK")
        assert small.wait(timeout_seconds=60)
        remove_placement_group(small)
    finally:
        remove_placement_group(big)
    assert placement_group_table(big)["state"] == "REMOVED"


def test_removal_frees_the_resources_and_stops_what_runs_in_the_group(
        three_nodes: LocalCluster, tmp_path: pathlib.Path) -> None:
    started, flag = tmp_path / "started", tmp_path / "never"
    pg = placement_group([{"CPU": 2}] * 3, strategy="STRICT_SPREAD")  # every CPU of the cluster
    removed = False
    try:
        assert pg.wait(timeout_seconds=60)
        stuck = hold.options(scheduling_strategy=in_bundle(pg, 0)).remote(str(started), str(flag))
        wait_for(started.exists, timeout=60, what="the task in the group running")
        outside = where.remote()
        ready, _ = rt.wait([outside], timeout=1)
        assert not ready, "a task ran on CPUs the group holds"
        remove_placement_group(pg)
        removed = True
        assert rt.get(outside, timeout=60) in node_ids(three_nodes)
        with pytest.raises(TaskCancelledError):
            rt.get(stuck, timeout=60)
    finally:
        if not removed:
            remove_placement_group(pg)
        flag.touch()
