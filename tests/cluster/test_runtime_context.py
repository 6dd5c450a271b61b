"""``get_runtime_context()`` as Ray's: ids, namespace, resources, placement group,
cancellation and actor restarts, from a driver, a task and an actor (issue 14, point 3)."""

from __future__ import annotations

import os
import pathlib
import time

import pytest

import runtime as rt
from runtime import state
from runtime.testing.wait import wait_for
from runtime.util import placement_group, remove_placement_group
from runtime.util.scheduling_strategies import PlacementGroupSchedulingStrategy

pytestmark = pytest.mark.cluster


@rt.remote(num_cpus=1)
def facts() -> dict[str, object]:
    ctx = rt.get_runtime_context()
    return {"job": ctx.get_job_id(), "task": ctx.get_task_id(), "actor": ctx.get_actor_id(),
            "node": ctx.get_node_id(), "worker": ctx.get_worker_id(), "ns": ctx.namespace,
            "resources": ctx.get_assigned_resources(), "pg": ctx.get_placement_group_id(),
            "canceled": ctx.is_canceled(), "reconstructed": ctx.was_current_actor_reconstructed}


@rt.remote(max_restarts=1)
class Probe:
    def __init__(self) -> None:
        self.made_in = rt.get_runtime_context().get_actor_id()

    def facts(self) -> tuple[str | None, str | None, bool, int]:
        ctx = rt.get_runtime_context()
        return self.made_in, ctx.get_actor_id(), ctx.was_current_actor_reconstructed, os.getpid()


@rt.remote
def until_cancelled(started: str, out: str) -> None:
    pathlib.Path(started).touch()
    try:
        while True:
            time.sleep(0.01)
    except KeyboardInterrupt:
        pathlib.Path(out).write_text(str(rt.get_runtime_context().is_canceled()))
        raise


def test_the_driver_has_a_job_and_a_node_but_no_task(cluster: rt.ClusterInfo) -> None:
    ctx = rt.get_runtime_context()
    assert ctx.get_task_id() is None and ctx.get_actor_id() is None
    assert ctx.get_node_id() in [n["NodeID"] for n in rt.nodes()]
    assert ctx.get_assigned_resources() == {} and ctx.get_placement_group_id() is None
    assert not ctx.is_canceled() and not ctx.was_current_actor_reconstructed
    assert isinstance(ctx.namespace, str) and ctx.namespace


def test_a_task_sees_its_own_ids_and_resources(cluster: rt.ClusterInfo) -> None:
    ref = facts.remote()
    got = rt.get(ref, timeout=60)
    ctx = rt.get_runtime_context()
    assert got["task"] == ref.hex()[:32] and got["job"] == ctx.get_job_id()
    assert got["actor"] is None and got["pg"] is None and got["resources"] == {"CPU": 1.0}
    assert got["worker"] != ctx.get_worker_id() and got["ns"] == ctx.namespace
    assert got["canceled"] is False and got["reconstructed"] is False


def test_a_task_in_a_placement_group_knows_the_group(cluster: rt.ClusterInfo) -> None:
    pg = placement_group([{"CPU": 1}])
    rt.get(pg.ready(), timeout=60)
    try:
        got = rt.get(facts.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote(),
                     timeout=60)
        assert got["pg"] == pg.id.hex()
    finally:
        remove_placement_group(pg)


def test_an_actor_knows_its_id_and_whether_it_was_restarted(cluster: rt.ClusterInfo) -> None:
    probe = Probe.remote()
    made_in, actor_id, reconstructed, pid = rt.get(probe.facts.remote(), timeout=60)
    assert made_in == actor_id == probe._actor_id.hex() and reconstructed is False
    os.kill(pid, 9)
    # Calls in flight when it died fail (max_task_retries=0): call once it is back.
    wait_for(lambda: any(a.actor_id == actor_id and a.state == "ALIVE" and a.num_restarts == 1
                         for a in state.list_actors()), timeout=60, what="the actor restarted")
    made_in, actor_id, reconstructed, new_pid = rt.get(probe.facts.remote(), timeout=60)
    assert new_pid != pid and reconstructed is True and made_in == actor_id
    rt.kill(probe)


def test_a_cancelled_task_sees_it(cluster: rt.ClusterInfo, tmp_path: pathlib.Path) -> None:
    started, out = tmp_path / "started", tmp_path / "out"
    ref = until_cancelled.remote(str(started), str(out))
    wait_for(started.exists, timeout=60, what="the task running")
    rt.cancel(ref)
    with pytest.raises(rt.exceptions.TaskCancelledError):
        rt.get(ref, timeout=60)
    wait_for(out.exists, timeout=30, what="the task's answer")
    assert out.read_text() == "True"


@rt.remote
class SelfAware:
    def __init__(self) -> None:
        self.n = 0

    def me(self) -> rt.ActorHandle:
        return rt.get_runtime_context().current_actor

    def incr(self) -> int:
        self.n += 1
        return self.n


@rt.remote
def call_me(handles: list[rt.ActorHandle]) -> int:
    return int(rt.get(handles[0].incr.remote()))


def test_current_actor_is_a_handle_to_the_actor_itself(cluster: rt.ClusterInfo) -> None:
    actor = SelfAware.remote()
    me = rt.get(actor.me.remote(), timeout=60)
    assert me == actor and me.actor_id == actor.actor_id
    assert rt.get(call_me.remote([me]), timeout=60) == 1  # usable like any handle
    assert rt.get(me.incr.remote(), timeout=60) == 2
    with pytest.raises(RuntimeError, match="only available inside an actor"):
        rt.get_runtime_context().current_actor
