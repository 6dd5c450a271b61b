"""An actor ends when its last handle goes out of scope (issue 14, point 6), as in Ray.

Every handle of an actor that is neither named nor detached refers to one anchor object
the creator owns; the creator's node ends the actor once nothing anywhere holds it (the
creator dropped its handles, and every task or actor it passed one to dropped theirs),
after the calls already made have run. Real clusters; the test waits on the actor table.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import pytest

import runtime as rt
import runtime.state
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.testing.wait import wait_for
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two nodes of one CPU each, this process attached to the first."""
    local = LocalCluster([NodeSpec(num_cpus=1), NodeSpec(num_cpus=1)],
                         session_root=tmp_path_factory.mktemp("scope") / "s").start()
    try:
        rt.init(address=local.address, token_file=str(local.token_file))
        yield local
    finally:
        rt.shutdown()
        local.stop()


@rt.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self, flag: Any = None) -> int:
        if flag is not None:
            flag.wait()
        self.n += 1
        return self.n


@rt.remote
class Holder:
    """Keeps a handle it was passed (a borrower), until told to forget it."""

    def __init__(self) -> None:
        self.kept: Any = None

    def keep(self, handles: list[Any]) -> None:
        self.kept = handles[0]

    def call(self) -> int:
        return int(rt.get(self.kept.incr.remote()))

    def forget(self) -> None:
        self.kept = None


@rt.remote
class Supervisor:
    """Creates actors and hands their handles out: it owns them."""

    def __init__(self) -> None:
        self.children = [Counter.remote() for _ in range(2)]

    def children_of(self) -> list[Any]:
        return self.children


@rt.remote
def call_through(handles: list[Any]) -> int:
    return int(rt.get(handles[0].incr.remote()))


def _row(actor_id: str) -> Any:
    return next((a for a in runtime.state.list_actors() if a.actor_id == actor_id), None)


def _wait_dead(actor_id: str) -> Any:
    wait_for(lambda: (r := _row(actor_id)) is not None and r.state == "DEAD", timeout=60,
             what=f"actor {actor_id[:12]} dead")
    return _row(actor_id)


def test_calls_made_before_the_last_handle_went_away_run_then_the_actor_ends(
        cluster: LocalCluster, make_flag: Callable[[str], Any]) -> None:
    counter = Counter.remote()
    actor_id = counter.actor_id
    flag = make_flag("hold")
    refs = [counter.incr.remote(flag)] + [counter.incr.remote() for _ in range(4)]
    del counter  # the last handle: the five calls are queued or running
    wait_for(lambda: (r := _row(actor_id)) is not None and r.state == "ALIVE", timeout=60,
             what="the actor alive while its calls wait")
    flag.set()
    assert rt.get(refs, timeout=60) == [1, 2, 3, 4, 5]
    row = _wait_dead(actor_id)
    assert "went out of scope" in row.death_cause and "detached" in row.death_cause


def test_an_actor_created_and_dropped_at_once_ends(cluster: LocalCluster) -> None:
    actor_id = Counter.remote().actor_id
    _wait_dead(actor_id)


def test_a_borrowed_handle_keeps_the_actor_until_the_borrower_drops_it(cluster: LocalCluster) -> None:
    counter = Counter.remote()
    actor_id = counter.actor_id
    holder = Holder.remote()
    # Inside a list: the handle travels as itself (borrowed), not resolved as an argument.
    rt.get(holder.keep.remote([counter]))
    assert rt.get(call_through.remote([counter])) == 1  # a task borrowed it too, and is done
    del counter
    assert rt.get(holder.call.remote()) == 2  # the holder's handle keeps the actor alive
    assert _row(actor_id).state == "ALIVE"
    rt.get(holder.forget.remote())
    _wait_dead(actor_id)
    del holder


def test_named_and_detached_actors_outlive_their_handles(cluster: LocalCluster) -> None:
    named = Counter.options(name="scope-named").remote()
    assert rt.get(named.incr.remote()) == 1
    detached = Counter.options(name="scope-detached", lifetime="detached").remote()
    assert rt.get(detached.incr.remote()) == 1
    del named, detached
    # Still there, with their state: reached again by name.
    assert rt.get(rt.get_actor("scope-named").incr.remote()) == 2
    again = rt.get_actor("scope-detached")
    assert rt.get(again.incr.remote()) == 2
    rt.kill(again)


def test_an_actor_on_another_node_ends_with_its_last_handle_after_its_calls(
        cluster: LocalCluster, make_flag: Callable[[str], Any]) -> None:
    mine = rt.get_runtime_context().get_node_id()
    other = next(n["NodeID"] for n in rt.nodes() if n["NodeID"] != mine)
    counter = Counter.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False)).remote()
    actor_id = counter.actor_id
    flag = make_flag("hold")
    refs = [counter.incr.remote(flag)] + [counter.incr.remote() for _ in range(3)]
    del counter
    flag.set()
    assert rt.get(refs, timeout=60) == [1, 2, 3, 4]
    row = _wait_dead(actor_id)
    assert row.node_id == other and "went out of scope" in row.death_cause


def test_actors_die_with_their_owner_an_actor_even_while_others_hold_handles(
        cluster: LocalCluster) -> None:
    supervisor = Supervisor.remote()
    children = rt.get(supervisor.children_of.remote())
    assert rt.get([c.incr.remote() for c in children]) == [1, 1]
    rt.kill(supervisor)
    for child in children:  # the driver still holds their handles: their owner died all the same
        row = _wait_dead(child.actor_id)
        assert "owner" in row.death_cause
