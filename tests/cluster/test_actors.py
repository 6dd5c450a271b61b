"""Actors on a real cluster: creation, ordered calls, the actor table, names, failures, concurrency.

Most tests share one module-scoped ``rt.init`` cluster (``cluster``); other drivers attach
to it as subprocesses. The detached-lifetime test starts its own ``LocalCluster`` and drives
it from subprocess drivers only, so it does not touch the shared connection. Nothing here
sleeps to let time pass: a constructor or method that must stay running waits on a ``Flag``
(a file the test creates), and the test waits on state with ``wait_for``; the actor table
is read through ``rt.state`` (the node writes each transition within ~100 ms).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import cloudpickle
import psutil
import pytest

import runtime as rt
import runtime.state
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.exceptions import (
    ActorDiedError,
    ActorNameTakenError,
    ActorNotFoundError,
    GetTimeoutError,
    TaskError,
)
from runtime.testing.wait import WaitTimeoutError, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]

# Workers cannot import this test module: ship its classes and functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    # Logical GPU and a custom resource so that actor resource options can be checked.
    return {"num_cpus": 2, "num_gpus": 1, "resources": {"slot": 2}}


# ---- helpers ---------------------------------------------------------------------------


def actor_state(actor: rt.ActorHandle | str) -> Any:
    """The row of an actor (handle or hex id) from ``rt.state.list_actors()``, or None."""
    actor_id = actor if isinstance(actor, str) else actor.actor_id
    return next((a for a in rt.state.list_actors() if a.actor_id == actor_id), None)


def wait_row(handle: rt.ActorHandle | str, pred: Callable[[Any], bool], what: str,
             timeout: float = 20.0) -> Any:
    """Wait until the actor's table row satisfies ``pred``; the timeout names the last row."""
    last: list[Any] = [None]

    def check() -> Any:
        row = last[0] = actor_state(handle)
        return row if row is not None and pred(row) else None

    try:
        return wait_for(check, timeout, what=what, interval=0.05)
    except WaitTimeoutError as e:
        raise WaitTimeoutError(e.what, e.timeout, last[0]) from None


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def run_driver(tmp_path: pathlib.Path, env: dict[str, str], name: str, script: str,
               *args: str) -> dict[str, Any]:
    """Run ``script`` as another driver process; it writes its findings as JSON to argv[1].

    The process is waited for (bounded), so none outlives the test.
    """
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(path), str(out), *args], env=env,
                          capture_output=True, text=True, timeout=45)
    assert proc.returncode == 0, (f"driver {name} exited with {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


# ---- actor classes used by several tests -----------------------------------------------


@rt.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start
        self.items: list[Any] = []

    def incr(self, by: int = 1) -> int:
        self.n += by
        return self.n

    def value(self) -> int:
        return self.n

    def append(self, x: Any) -> None:
        self.items.append(x)

    def read(self) -> list[Any]:
        return list(self.items)

    def pid(self) -> int:
        return os.getpid()

    def fail(self, msg: str) -> None:
        raise ValueError(msg)

    def die(self, code: int = 1) -> None:
        os._exit(code)

    @rt.method(num_returns=2)
    def pair(self) -> tuple[int, int]:
        return self.n, self.n + 1

    def triple(self) -> tuple[int, int, int]:
        return 1, 2, 3

    @staticmethod
    def double(x: int) -> int:
        return 2 * x

    @classmethod
    def kind(cls) -> str:
        return cls.__name__


# ---- creation, process, refs -----------------------------------------------------------


def test_remote_returns_a_handle_at_once_while_the_constructor_runs(cluster, make_flag) -> None:
    gate = make_flag("ctor-gate")

    @rt.remote
    class Gated:
        def __init__(self, gate: Any) -> None:
            gate.wait()
            self.ready = True

        def is_ready(self) -> bool:
            return self.ready

    assert isinstance(Gated, rt.ActorClass)
    with pytest.raises(TypeError, match=r"Gated\.remote\(\)"):
        Gated()
    with pytest.raises(TypeError, match="No actor was created"):
        Gated.remote(gate, "one too many")
    h = Gated.remote(gate)  # returns although the constructor blocks on the gate
    assert isinstance(h, rt.ActorHandle)
    ref = h.is_ready.remote()  # queued while PENDING
    assert isinstance(ref, rt.ObjectRef)
    wait_row(h, lambda r: r.state == "PENDING", "the actor row to say PENDING")
    assert rt.wait([ref], timeout=0)[0] == []
    gate.set()
    assert rt.get(ref, timeout=30) is True
    rt.kill(h)


def test_the_actor_runs_in_its_own_process_with_a_stable_pid(cluster) -> None:
    c = Counter.remote()
    pids = rt.get([c.pid.remote() for _ in range(5)], timeout=30)
    assert len(set(pids)) == 1
    assert pids[0] != os.getpid()
    assert psutil.Process(pids[0]).cmdline().count("runtime.worker") == 1
    wait_row(c, lambda r: r.state == "ALIVE" and r.pid == pids[0] and r.node_id == cluster.node_id,
             "the row to say ALIVE with the actor's pid and node")
    rt.kill(c)


def test_methods_return_refs_and_num_returns_is_honoured(cluster) -> None:
    c = Counter.remote(5)
    ref = c.incr.remote()
    assert isinstance(ref, rt.ObjectRef)
    assert rt.get(ref, timeout=30) == 6
    a, b = c.pair.remote()  # @rt.method(num_returns=2)
    assert isinstance(a, rt.ObjectRef) and isinstance(b, rt.ObjectRef)
    assert rt.get([a, b], timeout=30) == [6, 7]
    refs = c.triple.options(num_returns=3).remote()
    assert rt.get(refs, timeout=30) == [1, 2, 3]
    x, y = c.pair.options(num_returns=2).remote()
    assert rt.get([x, y], timeout=30) == [6, 7]
    assert rt.get([c.double.remote(21), c.kind.remote()], timeout=30) == [42, "Counter"]
    with pytest.raises(TypeError, match=r"incr\.remote\(\)"):
        c.incr()
    with pytest.raises(AttributeError, match="no method 'nope'"):
        c.nope  # noqa: B018
    with pytest.raises(ValueError, match="unknown option"):
        c.incr.options(num_cpus=1)
    # Arguments that do not fit the method are refused at the call site, as for tasks.
    with pytest.raises(TypeError, match=r"Counter\.double\.remote\(\): missing a required argument.*Nothing was submitted"):
        c.double.remote()
    with pytest.raises(TypeError, match=r"Counter\.incr\.remote\(\): too many"):
        c.incr.remote(1, 2, 3)
    assert rt.get(c.incr.remote(), timeout=30) == 7  # nothing of the refused calls ran
    rt.kill(c)


def _available() -> dict[str, float]:
    """What is free, without the memory resource (bytes, not held by these actors)."""
    return {k: v for k, v in rt.available_resources().items() if k != "memory"}


def test_resource_options_are_held_while_the_actor_lives(cluster) -> None:
    full = {"CPU": 2.0, "GPU": 1.0, "slot": 2.0}
    wait_for(lambda: _available() == full, 10,
             what="every resource to be free before the test")

    @rt.remote(num_cpus=1, num_gpus=1, resources={"slot": 1}, max_restarts=1,
               max_task_retries=1, max_concurrency=1)
    class Holder:
        def gpus(self) -> list[int]:
            return rt.get_gpu_ids()

    h = Holder.remote()
    assert rt.get(h.gpus.remote(), timeout=30) == [0]
    wait_for(lambda: _available() == {"CPU": 1.0, "slot": 1.0}, 10,
             what="the actor to hold 1 CPU, 1 GPU and 1 slot")
    # A second one does not fit: it waits, PENDING, until the first one frees its GPU.
    h2 = Holder.remote()
    ref = h2.gpus.remote()
    wait_row(h2, lambda r: r.state == "PENDING", "the second actor to be PENDING")
    rt.kill(h)
    assert rt.get(ref, timeout=30) == [0]
    rt.kill(h2)
    # One that can never fit waits, PENDING; killing it fails its queued calls.
    big = Holder.options(resources={"slot": 3}).remote()
    queued = big.gpus.remote()
    wait_row(big, lambda r: r.state == "PENDING", "the infeasible actor to be PENDING")
    rt.kill(big)
    with pytest.raises(ActorDiedError, match=r"kill\(\)"):
        rt.get(queued, timeout=30)
    wait_for(lambda: _available() == full, 10,
             what="the killed actors to give their resources back")


# ---- ordering, handles, errors ---------------------------------------------------------


def test_calls_from_one_caller_run_in_submission_order(cluster) -> None:
    c = Counter.remote()
    for i in range(200):
        c.append.remote(i)
    assert rt.get(c.read.remote(), timeout=30) == list(range(200))
    rt.kill(c)


@rt.remote
def gated_value(gate: Any, value: str) -> str:
    gate.wait()
    return value


def test_a_call_waiting_for_an_argument_holds_back_the_calls_after_it(cluster, make_flag) -> None:
    gate = make_flag("arg")
    c = Counter.remote()
    c.append.remote(gated_value.remote(gate, "first"))  # its argument is not ready yet
    c.append.remote("second")
    read = c.read.remote()
    assert rt.wait([read], timeout=0)[0] == []
    gate.set()
    assert rt.get(read, timeout=30) == ["first", "second"]
    rt.kill(c)


@rt.remote
def call_from_task(h: rt.ActorHandle, n: int) -> list[int]:
    # Ordered from this caller too: n increments, then the value.
    refs = [h.incr.remote() for _ in range(n)]
    return rt.get(refs)


@rt.remote
class Relay:
    def relay(self, h: rt.ActorHandle, by: int) -> int:
        return rt.get(h.incr.remote(by))

    def relay_many(self, hs: list[rt.ActorHandle]) -> list[int]:
        return rt.get([h.value.remote() for h in hs])


def test_handles_work_inside_tasks_and_other_actors(cluster) -> None:
    c = Counter.remote()
    got = rt.get(call_from_task.remote(c, 5), timeout=30)
    assert got == [1, 2, 3, 4, 5]
    relay = Relay.remote()
    assert rt.get(relay.relay.remote(c, 10), timeout=30) == 15
    assert rt.get(relay.relay_many.remote([c, c]), timeout=30) == [15, 15]
    assert rt.get(c.value.remote(), timeout=30) == 15
    rt.kill(c)
    rt.kill(relay)


def _misuse(h: rt.ActorHandle, good: int) -> tuple[list[str], int]:
    """Call ``h``'s methods with arguments that do not fit (each must raise TypeError at
    once), then one that fits: the refusals' texts and the good call's value."""
    refused = []
    for call in (lambda: h.incr.remote(1, 2, 3), lambda: h.double.remote()):
        try:
            call()
        except TypeError as e:
            refused.append(str(e))
        else:
            refused.append("submitted")
    return refused, rt.get(h.incr.remote(good))


def _assert_refused(refused: list[str]) -> None:
    assert len(refused) == 2, refused
    assert re.fullmatch(r"Counter\.incr\.remote\(\): too many positional arguments\. "
                        r"Nothing was submitted\.", refused[0]), refused[0]
    assert re.fullmatch(r"Counter\.double\.remote\(\): missing a required argument: 'x'\. "
                        r"Nothing was submitted\.", refused[1]), refused[1]


@rt.remote
def misuse(h: rt.ActorHandle, good: int) -> tuple[list[str], int]:
    return _misuse(h, good)


@rt.remote
def misuse_by_name(name: str, namespace: str, good: int) -> tuple[list[str], int]:
    return _misuse(rt.get_actor(name, namespace), good)


@rt.remote
class Misuser:
    def misuse(self, h: rt.ActorHandle, good: int) -> tuple[list[str], int]:
        return _misuse(h, good)

    def one(self, x: int) -> int:
        return x

    def me(self) -> rt.ActorHandle:
        return rt.get_runtime_context().current_actor

    def misuse_myself(self) -> tuple[str, rt.ObjectRef]:
        me = rt.get_runtime_context().current_actor
        try:
            me.one.remote(1, 2, 3)
        except TypeError as e:
            refused = str(e)
        else:
            refused = "submitted"
        return refused, me.one.remote(7)  # runs once this call returns


def test_every_handle_checks_arguments_at_the_call_site(cluster) -> None:
    """Not only the creator's handle: one passed to a task or an actor, one looked up by
    name (here or in a task), one from ``current_actor``: the call that does not fit raises
    TypeError in the caller's ``.remote()``, the good ones run."""
    c = Counter.remote()
    refused, value = rt.get(misuse.remote(c, 5), timeout=30)
    _assert_refused(refused)
    assert value == 5
    m = Misuser.remote()
    refused, value = rt.get(m.misuse.remote(c, 5), timeout=30)
    _assert_refused(refused)
    assert value == 10

    named = Counter.options(name="checked", namespace="ns-checked").remote(100)
    found = rt.get_actor("checked", "ns-checked")
    _assert_refused(_misuse(found, 1)[0])
    refused, value = rt.get(misuse.remote(found, 1), timeout=30)  # passed on from get_actor
    _assert_refused(refused)
    refused, value = rt.get(misuse_by_name.remote("checked", "ns-checked", 1), timeout=30)
    _assert_refused(refused)
    assert rt.get(named.value.remote(), timeout=30) == 103

    # current_actor: inside the actor, and sent back to the driver.
    refused_self, ref = rt.get(m.misuse_myself.remote(), timeout=30)
    assert refused_self.startswith("Misuser.one.remote(): too many positional arguments"), refused_self
    assert rt.get(ref, timeout=30) == 7
    me = rt.get(m.me.remote(), timeout=30)
    with pytest.raises(TypeError, match=r"Misuser\.one\.remote\(\): missing a required argument"):
        me.one.remote()
    assert rt.get(me.one.remote(8), timeout=30) == 8
    for h in (c, m, named):
        rt.kill(h)


def test_a_method_that_raises_gives_task_error_and_the_actor_keeps_its_state(cluster) -> None:
    c = Counter.remote()
    assert rt.get(c.incr.remote(3), timeout=30) == 3
    with pytest.raises(TaskError, match="boom 42") as info:
        rt.get(c.fail.remote("boom 42"), timeout=30)
    assert isinstance(info.value, ValueError)
    assert "Counter.fail" in str(info.value)
    assert rt.get(c.incr.remote(), timeout=30) == 4
    wait_row(c, lambda r: r.state == "ALIVE" and r.num_restarts == 0, "ALIVE, never restarted")
    rt.kill(c)


# ---- the actor table -------------------------------------------------------------------


@rt.remote(max_restarts=1)
class Phoenix:
    """Holds its first start on ``start``, and a restart on ``restart``."""

    def __init__(self, start: Any, restart: Any, marker: str) -> None:
        again = os.path.exists(marker)
        (restart if again else start).wait()
        pathlib.Path(marker).touch()

    def pid(self) -> int:
        return os.getpid()

    def die(self) -> None:
        os._exit(3)


class Recorder:
    """An ``rt.state.subscribe`` callback that keeps each actor's published states."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []

    def __call__(self, ch: Any) -> None:
        if ch.table == "actors" and ch.value is not None:
            with self.lock:
                self.seen.append((ch.key, ch.value.state))

    def states(self, actor_id: str) -> list[str]:
        """The actor's states in publication order, repeats collapsed."""
        with self.lock:
            mine = [s for k, s in self.seen if k == actor_id]
        return [s for i, s in enumerate(mine) if i == 0 or mine[i - 1] != s]

    def wait_states(self, actor_id: str, expected: list[str]) -> None:
        """Wait until the actor's published states are ``expected``; a timeout shows them."""
        try:
            wait_for(lambda: self.states(actor_id) == expected, 10,
                     what=f"the subscription to publish {expected}", interval=0.05)
        except WaitTimeoutError as e:
            raise WaitTimeoutError(e.what, e.timeout, self.states(actor_id)) from None


def test_the_actor_table_tracks_and_publishes_the_lifecycle(cluster, make_flag, tmp_path) -> None:
    rec = Recorder()
    start = make_flag("start")
    with rt.state.subscribe(["actors"], rec):
        a = Phoenix.remote(start, make_flag("unused"), str(tmp_path / "constructed"))
        row = wait_row(a, lambda r: r.state == "PENDING", "PENDING while the constructor waits")
        assert (row.class_name, row.num_restarts, row.max_restarts) == ("Phoenix", 0, 1)
        assert row.job_id == cluster.job_id and not row.detached and row.pid is None
        assert "state=PENDING" in repr(a)
        start.set()
        pid = rt.get(a.pid.remote(), timeout=30)
        wait_row(a, lambda r: r.state == "ALIVE" and r.pid == pid and r.node_id == cluster.node_id,
                 "ALIVE with its pid and node")
        rt.kill(a)
        row = wait_row(a, lambda r: r.state == "DEAD", "DEAD after kill()")
        assert "kill()" in row.death_cause and row.num_restarts == 0
        rec.wait_states(a.actor_id, ["PENDING", "ALIVE", "DEAD"])


@rt.remote
class ShortLived:
    def die(self) -> None:
        os._exit(4)


def test_every_transition_is_published_even_a_short_lived_one(cluster) -> None:
    rec = Recorder()
    with rt.state.subscribe(["actors"], rec):
        a = ShortLived.remote()
        a.die.remote()  # queued behind the creation: ALIVE lasts a few ms, far less than 100
        wait_row(a, lambda r: r.state == "DEAD", "DEAD once its process exited")
        rec.wait_states(a.actor_id, ["PENDING", "ALIVE", "DEAD"])


def test_the_actor_row_holds_the_creation_spec_and_a_fixed_start_time(cluster) -> None:
    from runtime.api import _context
    from runtime.protocol import common_pb2, gcs_pb2

    c = Counter.remote(7)
    rt.get(c.value.remote(), timeout=30)
    alive = wait_row(c, lambda r: r.state == "ALIVE", "ALIVE")
    rt.kill(c)
    dead = wait_row(c, lambda r: r.state == "DEAD", "DEAD")
    assert dead.start_time == alive.start_time, "start_time must be the creation time"
    node = next(n for n in rt.nodes() if n["NodeID"] == cluster.node_id)
    assert dead.node_address == f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
    client = _context.current()
    row = gcs_pb2.ActorRow.FromString(
        client.run(client.gcs.get_entry("actors", bytes.fromhex(c.actor_id)), 10))
    spec = common_pb2.TaskSpec.FromString(row.creation_spec)
    assert spec.actor_creation and spec.actor_id.hex() == c.actor_id


def test_list_actors_and_the_handle_repr(cluster) -> None:
    c = Counter.options(name="listed", namespace="ns-list").remote()
    rt.get(c.value.remote(), timeout=30)
    row = wait_row(c, lambda r: r.state == "ALIVE", "ALIVE")
    assert (row.class_name, row.name, row.namespace) == ("Counter", "listed", "ns-list")
    assert c.actor_id in {a.actor_id for a in rt.state.list_actors(state="alive")}
    r = repr(c)
    assert "Counter" in r and "'listed'" in r and "state=ALIVE" in r
    rt.kill(c)
    wait_row(c, lambda r: r.state == "DEAD", "DEAD")
    assert c.actor_id in {a.actor_id for a in rt.state.list_actors(state="DEAD")}
    assert "state=DEAD" in repr(c)


# ---- named actors ----------------------------------------------------------------------


def test_named_actors_are_found_by_name_and_namespace(cluster) -> None:
    a = Counter.options(name="shared", namespace="ns-a").remote(1)
    b = Counter.options(name="shared", namespace="ns-b").remote(100)
    assert rt.get(rt.get_actor("shared", namespace="ns-a").incr.remote(), timeout=30) == 2
    assert rt.get(rt.get_actor("shared", "ns-b").incr.remote(), timeout=30) == 101
    assert rt.get_actor("shared", "ns-a") == a
    with pytest.raises(ValueError, match="'nobody'") as unknown:
        rt.get_actor("nobody", "ns-a")
    assert isinstance(unknown.value, ActorNotFoundError)
    with pytest.raises(ValueError, match="'shared'"):
        rt.get_actor("shared")  # the default namespace has none
    with pytest.raises(ValueError, match="already exists") as taken:
        Counter.options(name="shared", namespace="ns-a").remote()
    assert isinstance(taken.value, ActorNameTakenError)
    assert (taken.value.name, taken.value.namespace) == ("shared", "ns-a")
    again = Counter.options(name="shared", namespace="ns-a", get_if_exists=True).remote(50)
    assert again == a
    assert rt.get(again.incr.remote(), timeout=30) == 3
    # A dead actor's name is released and can be taken again.
    rt.kill(a)
    wait_for(lambda: _name_free("shared", "ns-a"), 10, what="the dead actor's name to be released")
    c = Counter.options(name="shared", namespace="ns-a").remote(9)
    assert rt.get(rt.get_actor("shared", "ns-a").value.remote(), timeout=30) == 9
    for h in (b, c):
        rt.kill(h)


def test_a_creation_that_fails_in_the_driver_leaves_its_name_free(cluster) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        Counter.options(name="unborn", namespace="ns-unborn").remote(threading.Lock())
    assert _name_free("unborn", "ns-unborn")
    c = Counter.options(name="unborn", namespace="ns-unborn").remote(4)
    assert rt.get(rt.get_actor("unborn", "ns-unborn").value.remote(), timeout=30) == 4
    rt.kill(c)


def _name_free(name: str, namespace: str) -> bool:
    try:
        rt.get_actor(name, namespace)
    except ValueError:
        return True
    return False


SECOND_DRIVER = """
import json, sys
import runtime as rt
out, address, token_file = sys.argv[1:4]
rt.init(address=address, token_file=token_file)
h = rt.get_actor("visible", namespace="ns-2nd")
found = {"incr": rt.get(h.incr.remote(5), timeout=30), "pid": rt.get(h.pid.remote(), timeout=30)}
try:
    rt.get_actor("invisible", namespace="ns-2nd")
except ValueError as e:
    found["missing"] = str(e)
json.dump(found, open(out, "w"))
rt.shutdown()
"""


def test_a_second_driver_process_finds_a_named_actor(cluster, tmp_path, subprocess_env) -> None:
    c = Counter.options(name="visible", namespace="ns-2nd").remote(1)
    pid = rt.get(c.pid.remote(), timeout=30)
    found = run_driver(tmp_path, subprocess_env(), "second", SECOND_DRIVER, cluster.address,
                       cluster.token_file)
    assert found["incr"] == 6 and found["pid"] == pid
    assert "invisible" in found["missing"]
    # The other driver's exit does not touch an actor it only used.
    assert rt.get(c.incr.remote(), timeout=30) == 7
    wait_row(c, lambda r: r.state == "ALIVE", "ALIVE")
    rt.kill(c)


CREATOR_DRIVER = """
import json, os, sys
import runtime as rt
out, address, token_file = sys.argv[1:4]
rt.init(address=address, token_file=token_file)

@rt.remote
class Keeper:
    def __init__(self):
        self.n = 0
    def incr(self):
        self.n += 1
        return self.n

k = Keeper.options(name="keeper", namespace="apps", lifetime="detached").remote()
t = Keeper.options(name="temp", namespace="apps").remote()
json.dump({"keeper": k.actor_id, "temp": t.actor_id, "k": rt.get(k.incr.remote(), timeout=30),
           "t": rt.get(t.incr.remote(), timeout=30)}, open(out, "w"))
"""

USER_DRIVER = """
import json, sys
import runtime as rt
out, address, token_file = sys.argv[1:4]
rt.init(address=address, token_file=token_file)
k = rt.get_actor("keeper", namespace="apps")
found = {"k": rt.get(k.incr.remote(), timeout=30)}
for name in ("temp", "never"):
    try:
        rt.get_actor(name, namespace="apps")
        found[name] = "found"
    except ValueError as e:
        found[name] = str(e)

@rt.remote
class Keeper:
    def incr(self):
        return -1

try:  # a duplicate name from another driver is refused too
    Keeper.options(name="keeper", namespace="apps").remote()
    found["dup"] = "created"
except ValueError as e:
    found["dup"] = str(e)
same = Keeper.options(name="keeper", namespace="apps", get_if_exists=True).remote()
found["same"] = same.actor_id == k.actor_id
found["k2"] = rt.get(same.incr.remote(), timeout=30)
json.dump(found, open(out, "w"))
"""


def test_detached_actors_outlive_their_driver_and_others_die_with_it(tmp_path, tmp_session_root,
                                                                     subprocess_env) -> None:
    """Not on the shared cluster: its own LocalCluster, driven only by subprocess drivers."""
    from runtime import _session
    from runtime.gcs.client import GcsClient
    from runtime.protocol import gcs_pb2

    with LocalCluster([NodeSpec(num_cpus=1)], session_root=tmp_session_root) as lc:
        assert lc.token_file is not None
        token_file = str(lc.token_file)
        token = _session.read_token(token_file)

        def rows() -> dict[str, gcs_pb2.ActorRow]:
            async def main() -> list[tuple[bytes, bytes]]:
                async with GcsClient(lc.address, token) as g:
                    return await g.list_table("actors")
            return {k.hex(): gcs_pb2.ActorRow.FromString(v) for k, v in asyncio.run(main())}

        made = run_driver(tmp_path, subprocess_env(), "creator", CREATOR_DRIVER, lc.address,
                          token_file)
        assert made["k"] == 1 and made["t"] == 1

        def settled() -> Any:
            r = rows()
            keeper, temp = r.get(made["keeper"]), r.get(made["temp"])
            ok = keeper is not None and temp is not None and temp.state == "DEAD"
            return (keeper, temp) if ok else None

        keeper, temp = wait_for(settled, 15, what="the non-detached actor to die with its owner",
                                interval=0.05)
        assert keeper.state == "ALIVE" and keeper.detached and not temp.detached

        found = run_driver(tmp_path, subprocess_env(), "user", USER_DRIVER, lc.address, token_file)
        assert found["k"] == 2, found
        assert "temp" in found["temp"] and "never" in found["never"]
        assert "already exists" in found["dup"]
        assert found["same"] is True and found["k2"] == 3
        assert rows()[made["keeper"]].state == "ALIVE"


OWNER_DRIVER = """
import json, sys
import runtime as rt
out, address, token_file = sys.argv[1:4]
rt.init(address=address, token_file=token_file)

@rt.remote
class Owned:
    def ping(self):
        return "pong"

h = Owned.options(name="owned", namespace="ns-owner").remote()
json.dump({"id": h.actor_id, "ping": rt.get(h.ping.remote(), timeout=30)}, open(out, "w"))
"""


def test_an_actor_whose_owner_exits_dies_naming_its_owner(cluster, tmp_path,
                                                          subprocess_env) -> None:
    made = run_driver(tmp_path, subprocess_env(), "owner", OWNER_DRIVER, cluster.address,
                      cluster.token_file)
    assert made["ping"] == "pong"
    row = wait_row(made["id"], lambda r: r.state == "DEAD", "DEAD after its owner exited")
    wait_for(lambda: _name_free("owned", "ns-owner"), 10,
             what="the dead actor's name to be released")
    assert "owner" in row.death_cause and "exited" in row.death_cause, row.death_cause


# ---- failures --------------------------------------------------------------------------


def test_kill_makes_later_calls_raise_actor_died_error_naming_the_cause(cluster) -> None:
    c = Counter.options(max_restarts=2).remote()  # no_restart wins over max_restarts
    pid = rt.get(c.pid.remote(), timeout=30)
    rt.kill(c, no_restart=True)
    with pytest.raises(ActorDiedError, match=r"kill\(\)") as info:
        rt.get(c.incr.remote(), timeout=30)
    assert "Counter" in str(info.value)
    row = wait_row(c, lambda r: r.state == "DEAD", "DEAD")
    assert "kill()" in row.death_cause and row.num_restarts == 0
    wait_for(lambda: pid_gone(pid), 10, what=f"the actor's process {pid} to exit")
    with pytest.raises(ActorDiedError, match=r"kill\(\)"):
        rt.get(c.value.remote(), timeout=30)
    with pytest.raises(TypeError, match="ActorHandle"):
        rt.kill("not a handle")  # type: ignore[arg-type]


def _ping(n: int) -> None:
    if n == 0:
        raise RuntimeError("the constructor could not open its database")
    _pong(n - 1)


def _pong(n: int) -> None:  # two functions, so that Python does not fold repeated frames
    _ping(n)


@rt.remote
class Broken:
    def __init__(self, depth: int) -> None:
        _ping(depth)

    def ping(self) -> str:
        return "pong"


@pytest.mark.parametrize("depth", [0, 40, 400], ids=["shallow", "deep", "very-deep"])
def test_a_constructor_that_raises_fails_every_call_with_its_traceback(cluster, depth) -> None:
    b = Broken.remote(depth)
    line = inspect.getsourcelines(Broken._cls.__init__)[1] + 1  # the `_ping(depth)` line
    for ref in (b.ping.remote(), b.ping.remote()):
        with pytest.raises(ActorDiedError) as info:
            rt.get(ref, timeout=30)
        msg = str(info.value)
        assert "Broken.ping() cannot run: its constructor raised" in msg
        assert f"line {line}, in __init__" in msg and "Traceback" in msg
        # The exception line is at the end of a long traceback: it must survive shortening.
        assert msg.rstrip().endswith("RuntimeError: the constructor could not open its database")
        # The constructor's own exception is the cause, of the user's type.
        cause = info.value.__cause__
        assert isinstance(cause, RuntimeError) and "could not open its database" in str(cause)
    row = wait_row(b, lambda r: r.state == "DEAD", "DEAD")
    assert "could not open its database" in row.death_cause


class VaultLockedError(Exception):
    """A user's own exception class (shipped by value with this module), with its data."""

    def __init__(self, vault: str, code: int) -> None:
        super().__init__(vault, code)
        self.vault, self.code = vault, code

    def __str__(self) -> str:
        return f"vault {self.vault!r} is locked (code {self.code})"


class VaultSealedError(Exception):
    """One whose ``__init__`` takes other arguments than the ``args`` it passes on (pickle
    alone would call ``VaultSealedError(message)`` to load it, and fail)."""

    def __init__(self, vault: str, code: int) -> None:
        super().__init__(f"vault {vault!r} is sealed (code {code})")
        self.vault, self.code = vault, code


def _unlock(vault: str, error: type[Exception]) -> None:
    raise error(vault, 42)


@rt.remote
class Vault:
    def __init__(self, vault: str, error: type[Exception]) -> None:
        _unlock(vault, error)

    def read(self) -> str:
        return "secret"


@pytest.mark.parametrize(("error", "text"), [(VaultLockedError, "is locked"),
                                             (VaultSealedError, "is sealed")],
                         ids=["plain", "init-takes-other-args"])
def test_a_constructor_that_raises_a_users_exception_is_every_calls_cause(cluster, error,
                                                                           text) -> None:
    v = Vault.remote("north", error)
    line = inspect.getsourcelines(Vault._cls.__init__)[1] + 1  # the `_unlock(...)` line
    shown = f"{error.__name__}: vault 'north' {text} (code 42)"
    causes = []
    for ref in (v.read.remote(), v.read.remote()):
        with pytest.raises(ActorDiedError, match="its constructor raised") as info:
            rt.get(ref, timeout=30)
        cause = info.value.__cause__
        # Of the user's own class (this module's, not a copy), with its data ...
        assert isinstance(cause, error), type(cause).__mro__
        assert (cause.vault, cause.code) == ("north", 42)  # type: ignore[attr-defined]
        # ... and the remote traceback: where the constructor raised, down to the raise.
        assert isinstance(cause, TaskError) and "Vault.__init__" in cause.function_name
        tb = cause.remote_traceback
        assert f"line {line}, in __init__" in tb and "in _unlock" in tb, tb
        assert tb.rstrip().endswith(shown), tb
        assert type(cause.cause) is error
        causes.append(cause)
    assert causes[0] is not causes[1]  # each call raises its own error
    # A call made after the actor is known dead fails the same way.
    wait_row(v, lambda r: r.state == "DEAD", "DEAD")
    with pytest.raises(ActorDiedError) as late:
        rt.get(v.read.remote(), timeout=30)
    assert isinstance(late.value.__cause__, error)


# ---- concurrency -----------------------------------------------------------------------


@rt.remote(max_concurrency=2)
class Threaded:
    def __init__(self) -> None:
        self.arrived = [threading.Event(), threading.Event()]

    def meet(self, i: int) -> str:
        self.arrived[i].set()
        if not self.arrived[1 - i].wait(20):
            return f"call {i} never saw call {1 - i} start: calls ran one at a time"
        return threading.current_thread().name


def test_max_concurrency_runs_calls_in_a_thread_pool(cluster) -> None:
    t = Threaded.remote()
    try:
        names = rt.get([t.meet.remote(0), t.meet.remote(1)], timeout=30)
    except GetTimeoutError:
        pytest.fail("two calls that wait for each other never both finished: "
                    "max_concurrency=2 did not run them concurrently")
    assert all(n.startswith("actor") for n in names), names
    assert len(set(names)) == 2
    rt.kill(t)


@rt.remote
class Async:
    def __init__(self, limit_dir: str) -> None:
        self.arrived = [asyncio.Event(), asyncio.Event()]
        self.running = 0
        self.peak = 0
        self.dir = limit_dir

    async def meet(self, i: int) -> str:
        self.arrived[i].set()
        try:
            await asyncio.wait_for(self.arrived[1 - i].wait(), 20)
        except TimeoutError:
            return f"call {i} never saw call {1 - i} start: calls ran one at a time"
        return "met"

    async def hold(self, i: int) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        pathlib.Path(self.dir, f"entered-{i}").touch()
        while not os.path.exists(os.path.join(self.dir, "release")):
            await asyncio.sleep(0.01)  # polls the test's flag file, no timing guess
        self.running -= 1
        return i

    def peak_seen(self) -> int:
        return self.peak

    async def fail(self) -> None:
        raise KeyError("async boom")

    def thread(self) -> str:
        return threading.current_thread().name


def test_async_methods_run_concurrently_on_an_event_loop(cluster, tmp_path) -> None:
    a = Async.remote(str(tmp_path))
    try:
        got = rt.get([a.meet.remote(0), a.meet.remote(1)], timeout=30)
    except GetTimeoutError:
        pytest.fail("two async calls that wait for each other never both finished")
    assert got == ["met", "met"]
    assert rt.get(a.thread.remote(), timeout=30) == "actor-loop"
    with pytest.raises(TaskError, match="async boom") as info:
        rt.get(a.fail.remote(), timeout=30)
    assert isinstance(info.value, KeyError)
    assert rt.get(a.thread.remote(), timeout=30) == "actor-loop"  # the loop goes on
    rt.kill(a)


def test_an_async_actor_runs_at_most_max_concurrency_calls_at_once(cluster, tmp_path) -> None:
    a = Async.options(max_concurrency=2).remote(str(tmp_path))
    refs = [a.hold.remote(i) for i in range(4)]
    wait_for(lambda: len(list(tmp_path.glob("entered-*"))) >= 2, 20, what="two calls to start")
    (tmp_path / "release").touch()
    assert rt.get(refs, timeout=30) == [0, 1, 2, 3]
    assert rt.get(a.peak_seen.remote(), timeout=30) == 2
    rt.kill(a)


class _Exiter:
    def bye(self, code: int) -> None:
        sys.exit(code)

    def hi(self) -> str:
        return "hi"


class _AsyncExiter:
    async def bye(self, code: int) -> None:
        sys.exit(code)

    async def hi(self) -> str:
        return "hi"


@pytest.mark.parametrize("kind", ["sync", "threaded", "async"])
def test_sys_exit_in_a_method_ends_the_actor_in_every_mode(cluster, kind) -> None:
    """Like an actor process that dies: the call and later ones fail; nothing hangs."""
    cls = {"sync": rt.remote(_Exiter), "threaded": rt.remote(max_concurrency=3)(_Exiter),
           "async": rt.remote(_AsyncExiter)}[kind]
    a = cls.remote()
    assert rt.get(a.hi.remote(), timeout=30) == "hi"
    with pytest.raises(ActorDiedError, match="died unexpectedly"):
        rt.get(a.bye.remote(7), timeout=30)
    with pytest.raises(ActorDiedError):
        rt.get(a.hi.remote(), timeout=30)
    wait_row(a, lambda r: r.state == "DEAD", "DEAD")


# ---- restarts (last: while the node bugs below stand, they leave stray workers) ----------


def test_a_restart_is_published_as_restarting_then_alive(cluster, make_flag, tmp_path) -> None:
    rec = Recorder()
    start, restart = make_flag("start"), make_flag("restart")
    try:
        with rt.state.subscribe(["actors"], rec):
            # The node writes the latest row per actor every ~100 ms, so the test holds each
            # state until the table shows it.
            a = Phoenix.remote(start, restart, str(tmp_path / "constructed"))
            wait_row(a, lambda r: r.state == "PENDING", "PENDING")
            start.set()
            pid = rt.get(a.pid.remote(), timeout=30)
            wait_row(a, lambda r: r.state == "ALIVE", "ALIVE")
            with pytest.raises(ActorDiedError, match=f"pid {pid}.*exit code 3"):
                rt.get(a.die.remote(), timeout=30)
            row = wait_row(a, lambda r: r.state in ("RESTARTING", "DEAD"),
                           "the death to be recorded")
            assert (row.state, row.num_restarts, row.pid) == ("RESTARTING", 1, None)
            restart.set()
            pid2 = rt.get(a.pid.remote(), timeout=30)
            assert pid2 != pid
            wait_row(a, lambda r: r.state == "ALIVE" and r.pid == pid2, "ALIVE with the new pid")
            rt.kill(a)
            row = wait_row(a, lambda r: r.state == "DEAD", "DEAD after kill()")
            assert row.num_restarts == 1 and "kill()" in row.death_cause
            rec.wait_states(a.actor_id, ["PENDING", "ALIVE", "RESTARTING", "ALIVE", "DEAD"])
    finally:
        start.set()
        restart.set()


def test_a_dead_process_restarts_the_actor_until_max_restarts_is_spent(cluster) -> None:
    c = Counter.options(max_restarts=2).remote(10)
    pids = [rt.get(c.pid.remote(), timeout=30)]
    for restart in (1, 2):
        assert rt.get(c.incr.remote(), timeout=30) == 11
        with pytest.raises(ActorDiedError, match=f"pid {pids[-1]}.*died unexpectedly"):
            rt.get(c.die.remote(), timeout=30)
        # Called after the death: runs on the new instance, whose state is fresh.
        assert rt.get(c.value.remote(), timeout=30) == 10
        pids.append(rt.get(c.pid.remote(), timeout=30))
        row = wait_row(c, lambda r: r.num_restarts >= restart and r.state == "ALIVE",
                       f"ALIVE after restart {restart}")
        assert row.num_restarts == restart
    assert len(set(pids)) == 3
    with pytest.raises(ActorDiedError, match="died unexpectedly"):
        rt.get(c.die.remote(), timeout=30)
    with pytest.raises(ActorDiedError, match=f"pid {pids[-1]}.*died unexpectedly"):
        rt.get(c.value.remote(), timeout=30)
    row = wait_row(c, lambda r: r.state == "DEAD", "DEAD once the restarts are spent")
    assert row.num_restarts == 2 and "died unexpectedly" in row.death_cause


def test_kill_without_no_restart_restarts_the_actor(cluster) -> None:
    c = Counter.options(max_restarts=1).remote(3)
    pid = rt.get(c.pid.remote(), timeout=30)
    rt.kill(c, no_restart=False)
    row = wait_row(c, lambda r: r.num_restarts >= 1 and r.state in ("ALIVE", "DEAD"),
                   "the restart to finish")
    assert (row.state, row.num_restarts) == ("ALIVE", 1), row.death_cause
    assert rt.get(c.pid.remote(), timeout=30) != pid
    assert rt.get(c.value.remote(), timeout=30) == 3
    rt.kill(c)


@rt.remote(max_restarts=1, max_task_retries=1)
class Flaky:
    def __init__(self) -> None:
        self.log: list[int] = []

    def die_once(self, marker: str, gate: Any) -> int:
        if not os.path.exists(marker):
            gate.wait()
            pathlib.Path(marker).touch()
            os._exit(1)
        return os.getpid()

    def die_always(self) -> None:
        os._exit(1)

    def step(self, i: int) -> int:
        self.log.append(i)
        return i

    def read(self) -> list[int]:
        return list(self.log)

    def pid(self) -> int:
        return os.getpid()


def test_an_in_flight_call_is_retried_on_the_restarted_actor(cluster, make_flag, tmp_path) -> None:
    f = Flaky.remote()
    gate = make_flag("die")
    gate.set()
    marker = tmp_path / "died"
    pid = rt.get(f.pid.remote(), timeout=30)
    pid2 = rt.get(f.die_once.remote(str(marker), gate), timeout=30)
    assert marker.exists() and pid2 != pid
    row = wait_row(f, lambda r: r.num_restarts >= 1 and r.state == "ALIVE", "ALIVE after a restart")
    assert (row.num_restarts, row.pid) == (1, pid2)
    rt.kill(f)


def test_an_in_flight_call_fails_once_its_retries_are_spent(cluster) -> None:
    f = Flaky.options(max_restarts=2, max_task_retries=1).remote()
    with pytest.raises(ActorDiedError, match="died unexpectedly"):
        rt.get(f.die_always.remote(), timeout=30)  # first run and one retry both die
    row = wait_row(f, lambda r: r.num_restarts >= 2 and r.state in ("ALIVE", "DEAD"),
                   "the second restart to finish")
    assert (row.state, row.num_restarts) == ("ALIVE", 2)
    assert rt.get(f.step.remote(1), timeout=30) == 1
    rt.kill(f)


def test_in_flight_calls_fail_when_max_task_retries_is_zero(cluster, make_flag, tmp_path) -> None:
    f = Flaky.options(max_task_retries=0).remote()
    gate = make_flag("die")
    gate.set()
    with pytest.raises(ActorDiedError, match="died unexpectedly"):
        rt.get(f.die_once.remote(str(tmp_path / "died"), gate), timeout=30)
    # The actor restarted anyway (max_restarts=1) and serves new calls.
    assert rt.get(f.step.remote(1), timeout=30) == 1
    rt.kill(f)


def test_retried_in_flight_calls_keep_their_order(cluster, gcs, make_flag, tmp_path) -> None:
    f = Flaky.remote()
    gate = make_flag("die")
    try:
        die = f.die_once.remote(str(tmp_path / "died"), gate)
        steps = [f.step.remote(i) for i in range(8)]
        # Every call has been sent to the actor process before it dies.
        wait_for(lambda: all((r := gcs.task_row(ref)) is not None and r.state == "RUNNING"
                             for ref in [die, *steps]), 15,
                 what="all calls to be in flight", interval=0.05)
    finally:
        gate.set()
    rt.get(die, timeout=30)
    assert rt.get(steps, timeout=30) == list(range(8))
    assert rt.get(f.read.remote(), timeout=30) == list(range(8))
    rt.kill(f)


@rt.remote(max_restarts=1)
class FromRef:
    def __init__(self, value: int) -> None:
        self.v = value

    def value(self) -> int:
        return self.v

    def die(self) -> None:
        os._exit(1)


def test_a_restart_reruns_the_constructor_with_its_object_ref_arguments(cluster) -> None:
    ref = rt.put(41)
    a = FromRef.remote(ref)
    assert rt.get(a.value.remote(), timeout=30) == 41
    del ref  # only the actor's creation spec refers to the object now
    with pytest.raises(ActorDiedError):
        rt.get(a.die.remote(), timeout=30)
    try:
        assert rt.get(a.value.remote(), timeout=15) == 41
    finally:
        rt.kill(a)


@rt.remote
class SlowStart:
    def __init__(self, gate: Any, pidfile: str) -> None:
        pathlib.Path(pidfile).write_text(str(os.getpid()))
        gate.wait()

    def ping(self) -> str:
        return "pong"


def test_kill_while_the_constructor_runs_stops_its_process(cluster, make_flag, tmp_path) -> None:
    gate = make_flag("slow")
    pidfile = tmp_path / "ctor.pid"
    a = SlowStart.remote(gate, str(pidfile))
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 20,
                       what="the constructor to start"))
    try:
        rt.kill(a)
        with pytest.raises(ActorDiedError, match=r"kill\(\)"):
            rt.get(a.ping.remote(), timeout=30)
        wait_row(a, lambda r: r.state == "DEAD", "DEAD")
        wait_for(lambda: pid_gone(pid), 5, what=f"the constructor's process {pid} to be killed")
    finally:
        gate.set()
        if not pid_gone(pid):  # the bug: do not leave a half-made actor in the shared pool
            os.kill(pid, signal.SIGKILL)
