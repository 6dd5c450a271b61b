"""Behaviour Ray's own tests expect of tasks and actors (issue 14, points 6 and 7): the
``@remote()`` form, class attributes, methods shadowed by attributes, ``exit_actor``, the
``memory`` resource, and functions that capture too much."""

from __future__ import annotations

import numpy as np
import pytest

import runtime as rt
from runtime import state
from runtime.actor import exit_actor
from runtime.testing.wait import wait_for

pytestmark = pytest.mark.cluster


def test_remote_with_empty_parentheses_is_an_error() -> None:
    with pytest.raises(TypeError, match="empty parentheses"):
        @rt.remote()
        def f() -> int:
            return 1


@rt.remote(max_restarts=2)
class Shadowed:
    LIMIT = 7

    def __init__(self) -> None:
        self.value = "an attribute"  # the same name as a method below

    def value(self) -> str:  # type: ignore[no-redef]
        return "the method"

    def stop(self) -> None:
        exit_actor()

    def ping(self) -> str:
        return "pong"


def test_class_attributes_are_read_through_the_actor_class() -> None:
    assert Shadowed.LIMIT == 7
    with pytest.raises(AttributeError, match="actor method"):
        Shadowed.ping  # noqa: B018 - the access is the test
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        Shadowed.nope  # noqa: B018


def test_a_method_is_called_even_when_an_attribute_has_its_name(cluster: rt.ClusterInfo) -> None:
    a = Shadowed.remote()
    assert rt.get(a.value.remote(), timeout=60) == "the method"
    rt.kill(a)


def test_exit_actor_ends_the_actor_for_good(cluster: rt.ClusterInfo) -> None:
    a = Shadowed.remote()
    assert rt.get(a.ping.remote(), timeout=60) == "pong"
    with pytest.raises(rt.exceptions.ActorDiedError, match="exit_actor"):
        rt.get(a.stop.remote(), timeout=60)
    wait_for(lambda: any(r.state == "DEAD" for r in state.list_actors() if r.actor_id == a._actor_id.hex()),
             timeout=30, what="the actor dead")
    [row] = [r for r in state.list_actors() if r.actor_id == a._actor_id.hex()]
    assert row.num_restarts == 0  # max_restarts=2, yet not restarted
    with pytest.raises(rt.exceptions.ActorDiedError, match="exit_actor"):
        rt.get(a.ping.remote(), timeout=60)


def test_exit_actor_outside_an_actor_is_a_type_error(cluster: rt.ClusterInfo) -> None:
    with pytest.raises(TypeError, match="actor's method"):
        exit_actor()

    @rt.remote
    def in_a_task() -> None:
        exit_actor()

    with pytest.raises(TypeError, match="actor's method"):
        rt.get(in_a_task.remote(), timeout=60)


def test_memory_is_a_resource_tasks_ask_for(cluster: rt.ClusterInfo) -> None:
    total = rt.cluster_resources()["memory"]
    assert total > 2**30

    @rt.remote(memory=2**30)
    def small() -> str:
        return "ran"

    assert rt.get(small.remote(), timeout=60) == "ran"
    too_much = small.options(memory=2 * total).remote()
    wait_for(lambda: (t := state.get_task(too_much)) is not None and t.state == "INFEASIBLE",
             timeout=30, what="the task infeasible")
    rt.cancel(too_much)


BIG = np.ones(110 * 2**20 // 8)
MEDIUM = np.ones(12 * 2**20 // 8)


def test_a_function_capturing_over_100_mib_is_refused_naming_the_capture(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    def total() -> float:
        return float(BIG.sum())

    with pytest.raises(ValueError, match="'BIG'"):
        total.remote()

    @rt.remote
    def medium() -> float:
        return float(MEDIUM.sum())

    with pytest.warns(UserWarning, match="'MEDIUM'"):
        assert rt.get(medium.remote(), timeout=60) == MEDIUM.size


@rt.remote
class Echo:
    def echo(self, x: object) -> object:
        return x

    def ping(self) -> str:
        return "pong"


@rt.remote
def wait_for_flag(flag: str) -> int:
    import os
    import time
    while not os.path.exists(flag):
        time.sleep(0.01)
    return 1


@rt.remote
def call_ping(actor: object) -> str:
    return rt.get(actor.ping.remote(), timeout=60)  # type: ignore[attr-defined]


def test_a_call_waiting_on_its_input_does_not_hold_back_other_callers(cluster: rt.ClusterInfo,
                                                                     tmp_path) -> None:
    flag = tmp_path / "go"
    e = Echo.remote()
    waiting = e.echo.remote(wait_for_flag.remote(str(flag)))  # the driver's call waits
    # Another caller (a task) is not held back by it: without the fix this never returns
    # while the flag is missing.
    assert rt.get(call_ping.remote(e), timeout=60) == "pong"
    assert not flag.exists()
    flag.touch()
    assert rt.get(waiting, timeout=60) == 1
    rt.kill(e)


@rt.remote
def make_and_call() -> str:
    return rt.get(Echo.remote().ping.remote(), timeout=60)


@rt.remote
class Maker:
    def make_and_call(self) -> str:
        return rt.get(Echo.remote().ping.remote(), timeout=60)


def test_actors_created_inside_tasks_and_actors_always_work(cluster: rt.ClusterInfo) -> None:
    # More creating tasks than CPUs: each blocks in get while its actor starts. An actor's
    # creation must never run nested in such a blocked worker (it would deadlock there).
    for _ in range(3):
        maker = Maker.remote()
        refs = [make_and_call.remote() for _ in range(8)] + [maker.make_and_call.remote()]
        assert rt.get(refs, timeout=120) == ["pong"] * 9
        rt.kill(maker)


@rt.remote
def fails_now() -> None:
    raise ValueError("failed first")


def test_get_of_a_list_raises_the_first_error_without_waiting_for_the_rest(
        cluster: rt.ClusterInfo, tmp_path) -> None:
    flag = tmp_path / "never"
    slow = wait_for_flag.remote(str(flag))
    # Without the fix this get waits for `slow`, which never ends (its flag is never set).
    with pytest.raises(ValueError, match="failed first"):
        rt.get([slow, fails_now.remote()], timeout=60)
    rt.cancel(slow, force=True)


@rt.remote(max_calls=1)
def pid_once() -> int:
    import os
    return os.getpid()


@rt.remote(max_calls=2)
def pid_twice() -> int:
    import os
    return os.getpid()


def test_max_calls_retires_a_worker_after_that_many_runs(cluster: rt.ClusterInfo) -> None:
    from collections import Counter

    once = [rt.get(pid_once.remote(), timeout=60) for _ in range(4)]
    assert len(set(once)) == 4  # a fresh worker each time
    twice = Counter(rt.get([pid_twice.remote() for _ in range(6)], timeout=60))
    assert max(twice.values()) <= 2
    with pytest.raises(ValueError, match="max_calls"):
        pid_once.options(max_calls=-1)


@rt.remote
def _my_task_id() -> str | None:
    return rt.get_runtime_context().get_task_id()


def test_a_refs_task_id_is_a_string_with_rays_taskid_methods(cluster: rt.ClusterInfo) -> None:
    ref = _my_task_id.remote()
    task_id = ref.task_id()
    assert task_id.hex() == task_id == rt.get(ref, timeout=60)  # Ray's form, and a plain string
    assert task_id.binary() == bytes.fromhex(task_id) and not task_id.is_nil()
