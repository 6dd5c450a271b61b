"""The parts of the node's local scheduler, each on its own: resources with fractional GPUs,
the worker table, CPU lending, object reference counts; and the actor table and the
cluster events through the ``LocalScheduler`` that wires them. Pure: no sockets, no clock."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from runtime import _ids
from runtime.config import Settings
from runtime.exceptions import ActorDiedError
from runtime.node.actions import (
    Action,
    FreeRemote,
    KillWorker,
    ObjectLocation,
    Pull,
    PutActor,
    ReleaseActorName,
    ReportEvent,
    Send,
    Spill,
    SpillReason,
    StopWorker,
)
from runtime.node.lending import Lending
from runtime.node.objects import ObjectTable, PullSource
from runtime.node.resources import Resources
from runtime.node.state import LocalScheduler
from runtime.node.workers import Frame, WorkerTable
from runtime.protocol import codec, common_pb2, node_pb2
from runtime.protocol.states import ActorState, WorkerState

NODE, PEER, DRIVER = b"N" * 16, b"P" * 16, b"D" * 16


class Store:
    def __init__(self) -> None:
        self.freed: list[bytes] = []
        self.pins: Counter[bytes] = Counter()

    def seal(self, oid: bytes, size: int) -> None: ...
    def locate(self, oid: bytes) -> str: return "/shm/" + oid.hex()
    def pin(self, oid: bytes) -> None: self.pins[oid] += 1
    def unpin(self, oid: bytes) -> None: self.pins[oid] -= 1
    def free(self, oid: bytes) -> None: self.freed.append(oid)


def _oid(c: bytes) -> bytes:
    return _ids.object_id(c * 16, 0)


# ---- Resources -------------------------------------------------------------------------


def test_fractional_gpus_pack_onto_the_lowest_index_and_come_back() -> None:
    r = Resources({"CPU": 4.0, "GPU": 2.0})
    need = {"CPU": 1.0, "GPU": 0.5}
    assert r.acquire(need) == [0] and r.acquire(need) == [0]
    assert r.gpu_free == [0.0, 1.0] and r.available == {"CPU": 2.0, "GPU": 1.0}
    assert r.acquire(need) == [1]
    assert not r.can_run({"GPU": 1.0})  # no GPU is whole any more
    r.release(need, [0], 0.0)
    assert r.gpu_free == [0.5, 0.5] and r.can_run({"GPU": 0.5}) and not r.can_run({"GPU": 1.0})


def test_whole_gpus_take_distinct_free_indices() -> None:
    r = Resources({"CPU": 4.0, "GPU": 3.0})
    assert r.acquire({"GPU": 0.25}) == [0]
    assert r.acquire({"GPU": 2.0}) == [1, 2]
    assert r.pick_gpus(1.0) is None and r.pick_gpus(0.75) == [0]


def test_lent_cpus_are_not_given_back_twice() -> None:
    r = Resources({"CPU": 2.0})
    r.acquire({"CPU": 1.0})
    r.lend(1.0)  # the task blocks in get
    assert r.available["CPU"] == 2.0
    r.release({"CPU": 1.0}, [], 1.0)  # it ends while still blocked
    assert r.available["CPU"] == 2.0
    assert r.how_many_fit({"CPU": 0.5}, 10) == 4 and r.ever_fits({"CPU": 2.0})
    assert not r.ever_fits({"CPU": 3.0})


# ---- WorkerTable and Lending ------------------------------------------------------------


def _table(t: list[float] | None = None, depth: int = 4) -> WorkerTable:
    clock = (lambda: t[0]) if t is not None else (lambda: 0.0)
    return WorkerTable(max_starting=2, pipeline_depth=depth, clock=clock)


def test_the_worker_table_counts_starting_workers_until_they_connect() -> None:
    wt = _table()
    wt.asked()
    wt.started(b"a", counted=True)
    wt.started(b"b", counted=False)  # started without a StartWorker action
    assert wt.starting == 2
    w = wt.connected(b"a", 10, b"ca")
    assert wt.starting == 1 and w.state == WorkerState.IDLE and wt.idle == [w]
    assert wt.exited(b"b") is not None and wt.starting == 0
    assert wt.exited(b"b") is None  # known no more


def test_idle_workers_are_handed_out_most_recent_first_and_reaped_oldest_first() -> None:
    t = [0.0]
    wt = _table(t)
    for i, wid in enumerate((b"a", b"b", b"c")):
        t[0] = float(i)
        wt.started(wid, counted=False)
        wt.connected(wid, i, b"c" + wid)
    w = wt.pop_idle()
    assert w is not None and w.worker_id == b"c"
    t[0] = 100.0
    assert wt.reap(keep=1, idle_s=10.0) == [b"a"]  # b stays warm
    assert set(wt.workers) == {b"b", b"c"}


def test_a_frame_is_popped_by_task_id_even_when_sent_ahead() -> None:
    wt = _table()
    wt.started(b"w", counted=False)
    w = wt.connected(b"w", 1, b"cw")
    w.frames.extend([Frame(b"t1", {"CPU": 1.0}), Frame(b"t2", {})])
    w.queued.append(Frame(b"t3", {"CPU": 9.0}))
    f = wt.pop_frame(w, b"t1")
    assert f is not None and f.task_id == b"t1" and [x.task_id for x in w.frames] == [b"t2"]
    ahead = wt.pop_frame(w, b"t3")
    assert ahead is not None and ahead.resources == {} and not w.queued
    assert wt.pop_frame(w, b"t9") is None


def test_pipelining_picks_the_least_loaded_busy_worker_of_the_same_function() -> None:
    wt = _table(depth=2)
    need = {"CPU": 1.0}
    functions = {b"t0": b"f", b"t1": b"f", b"t2": b"g"}
    for i in range(3):
        wid = bytes([i])
        wt.started(wid, counted=False)
        w = wt.connected(wid, i, wid)
        w.state = WorkerState.BUSY
        w.frames.append(Frame(b"t%d" % i, need))
    wt.workers[b"\x00"].queued.append(Frame(b"x", {}))
    best = wt.pipeline_worker(need, b"f", functions.get)
    assert best is not None and best.worker_id == b"\x01"
    wt.workers[b"\x01"].queued.extend([Frame(b"y", {}), Frame(b"z", {})])  # full (depth 2)
    best = wt.pipeline_worker(need, b"f", functions.get)
    assert best is not None and best.worker_id == b"\x00"
    assert wt.pipeline_worker(need, b"h", functions.get) is None
    assert wt.sent_ahead() == 3


def test_a_blocked_worker_lends_its_cpus_and_stacks_up_to_the_depth() -> None:
    wt, r = _table(), Resources({"CPU": 1.0})
    lending = Lending(max_inline_depth=2, workers=wt, resources=r)
    wt.started(b"w", counted=False)
    w = wt.connected(b"w", 1, b"cw")
    wt.assign(w, b"parent", {"CPU": 1.0}, r.acquire({"CPU": 1.0}))
    assert not lending.can_stack(w) and wt.running(b"parent") == b"w"
    assert lending.set_blocked(w, b"parent", True) is True
    assert lending.set_blocked(w, b"parent", True) is False  # blocked already: no change
    assert r.available["CPU"] == 1.0 and lending.can_stack(w)
    lending.waits_for(b"waited", b"w")
    assert lending.inline_host(b"waited", b"") is w
    assert lending.inline_host(b"child", b"parent") is w
    assert lending.inline_candidates(w, {b"parent": {b"child"}}) == [b"waited", b"child"]
    wt.assign(w, b"waited", {}, [])
    assert lending.set_blocked(w, b"waited", True) is True
    assert not lending.can_stack(w) and lending.inline_candidates(w, {}) == []  # depth 2
    assert wt.pop_frame(w, b"waited") is not None
    assert lending.set_blocked(w, b"parent", False) is False
    assert r.available["CPU"] == 0.0 and w.frames[0].lent == 0.0
    lending.forget(b"waited")
    assert lending.inline_host(b"waited", b"") is None
    wt.task_over(b"parent")
    assert wt.running(b"parent") is None


# ---- ObjectTable -------------------------------------------------------------------------


def _objects() -> tuple[ObjectTable, list[Action], Store]:
    out: list[Action] = []
    store = Store()
    return ObjectTable(NODE, store, lambda e: b"err", out.append), out, store


def test_an_object_is_freed_with_what_it_contains_when_its_count_reaches_zero() -> None:
    objects, out, store = _objects()
    inner, outer = _oid(b"i"), _oid(b"o")
    objects.incref(inner)
    objects.incref(outer)
    assert objects.add(common_pb2.ObjectData(object_id=inner, shm_path="/shm/i", size=10))
    assert objects.add(common_pb2.ObjectData(object_id=outer, inline=b"box", nested_refs=[inner]))
    assert not objects.add(common_pb2.ObjectData(object_id=outer, inline=b"again"))
    objects.decref(inner)
    assert inner in objects and objects.held(inner)  # the container still holds it
    objects.decref(outer)
    assert inner not in objects and outer not in objects and store.freed == [inner]
    assert out == [ObjectLocation(inner, 10, False), ObjectLocation(inner, 10, True)]


def test_a_remote_object_is_pulled_once_and_freed_remotely_when_dropped() -> None:
    objects, out, _ = _objects()
    oid = _oid(b"r")
    objects.incref(oid)
    objects.add_remote(oid, PEER, 5, [])
    objects.want(oid)
    objects.want(oid)
    assert out == [Pull(oid, PEER)] and objects.known(oid)
    wanted, source = objects.pull_done(oid)
    assert wanted and source == PEER
    objects.add(common_pb2.ObjectData(object_id=oid, shm_path="/shm/r", size=5))
    objects.set_remote_copy(oid, source)
    assert objects.pull_source(oid) == PullSource(None, 5, [])
    out.clear()
    objects.decref(oid)
    assert out == [FreeRemote(PEER, oid), ObjectLocation(oid, 5, True)]
    assert objects.pull_source(oid) is None


def test_copies_kept_for_another_node_live_until_it_releases_them() -> None:
    objects, _, _ = _objects()
    oid = _oid(b"k")
    objects.hold_for(PEER, oid)
    objects.add(common_pb2.ObjectData(object_id=oid, inline=b"v"))
    objects.release_remote_holds([oid], PEER)
    assert oid not in objects and objects.remote_holds[PEER] == Counter()


# ---- the actor table, through the local scheduler ------------------------------------------


class Node(LocalScheduler):
    def __init__(self) -> None:
        super().__init__(NODE, {"CPU": 2.0}, Store(), lambda e: codec.serialize(e, error=True).to_bytes(),
                         settings=Settings(), clock=lambda: 0.0)
        self.connect(DRIVER, "driver", 1)
        for i in range(2):
            wid = bytes([1, i]) + b"w" * 14
            self.worker_starting(wid, counted=False)
            self.connect(bytes([2, i]) + b"c" * 14, "worker", 100 + i, wid)
        self.take_actions()


def _actor_spec(name: str = "", max_restarts: int = 0) -> common_pb2.TaskSpec:
    options = {"class_name": "Counter", "name": name, "max_restarts": max_restarts}
    spec = common_pb2.TaskSpec(task_id=b"C" * 16, name="Counter.__init__", num_returns=1,
                               owner_id=DRIVER, actor_id=b"A" * 16, actor_creation=True,
                               actor_options=json.dumps(options).encode())
    spec.resources["CPU"] = 1.0
    return spec


def _call(i: int) -> common_pb2.TaskSpec:
    return common_pb2.TaskSpec(task_id=bytes([9, i]) + b"m" * 14, name="Counter.incr",
                               num_returns=1, owner_id=DRIVER, actor_id=b"A" * 16)


def _rows(actions: list[Action]) -> list[str]:
    return [a.row.state for a in actions if isinstance(a, PutActor)]


def _executed(actions: list[Action]) -> list[tuple[bytes, bytes]]:
    return [(a.client_id, a.op.execute.spec.task_id) for a in actions
            if isinstance(a, Send) and a.op.WhichOneof("op") == "execute"]


def test_an_actor_becomes_alive_and_runs_its_calls_in_order() -> None:
    s = Node()
    s.submit(DRIVER, _actor_spec())
    s.submit(DRIVER, _call(1))
    s.submit(DRIVER, _call(2))
    out = s.take_actions()
    [(client, _)] = _executed(out)
    assert _rows(out) == [ActorState.PENDING]
    s.result(client, node_pb2.TaskResult(task_id=b"C" * 16))
    out = s.take_actions()
    assert _rows(out) == [ActorState.ALIVE]
    assert _executed(out) == [(client, _call(1).task_id), (client, _call(2).task_id)]
    [row] = [a.row for a in out if isinstance(a, PutActor)]
    assert row.node_address == "" and row.node_id == NODE


def test_the_owner_hears_at_once_that_the_constructor_returned() -> None:
    """Its row waits for the node's next report; the owner is told on its session, ahead of
    the calls (so ahead of their results): its handle says ALIVE at once."""
    s = Node()
    s.submit(DRIVER, _actor_spec())
    s.submit(DRIVER, _call(1))
    [(client, _)] = _executed(s.take_actions())
    s.result(client, node_pb2.TaskResult(task_id=b"C" * 16))
    out = [a for a in s.take_actions() if isinstance(a, Send)]
    kinds = [(a.client_id, a.op.WhichOneof("op")) for a in out]
    assert kinds.index((DRIVER, "event")) < kinds.index((client, "execute"))
    [ev] = [a.op.event for a in out if a.op.WhichOneof("op") == "event"]
    assert (ev.actor_id, ev.task_id, ev.state, ev.node_id) == (b"A" * 16, b"C" * 16, "FINISHED", NODE)


def test_a_dead_actor_process_restarts_the_actor_within_max_restarts() -> None:
    s = Node()
    s.submit(DRIVER, _actor_spec(max_restarts=1))
    [(client, _)] = _executed(s.take_actions())
    s.result(client, node_pb2.TaskResult(task_id=b"C" * 16))
    actor_worker = s.actors.actors[b"A" * 16].worker_id
    s.take_actions()
    s.worker_exited(actor_worker, -9)
    out = s.take_actions()
    assert _rows(out) == [ActorState.RESTARTING]
    assert [task_id for _, task_id in _executed(out)] == [b"C" * 16]  # the constructor again


def test_killing_an_actor_whose_constructor_runs_kills_the_process_then_the_actor_dies() -> None:
    s = Node()
    s.submit(DRIVER, _actor_spec(name="counter", max_restarts=3))
    s.take_actions()
    creation = s.tasks[b"C" * 16]
    assert creation.phase == "RUNNING"
    s.kill_actor(b"A" * 16, no_restart=True)
    assert s.take_actions() == [KillWorker(creation.worker_id)]
    s.worker_exited(creation.worker_id, -9)
    out = s.take_actions()
    assert _rows(out) == [ActorState.DEAD]  # no restart, whatever max_restarts says
    assert ReleaseActorName("default", "counter") in out
    assert s.actors.actors[b"A" * 16].death_cause == "it was killed with kill()"


def test_after_a_gcs_outage_the_rows_of_the_actors_alive_here_are_written_again() -> None:
    s = Node()
    s.submit(DRIVER, _actor_spec(name="counter"))
    s.submit(DRIVER, _infeasible_actor())  # pending: its row is not this node's to repeat
    [(client, _)] = _executed(s.take_actions())
    s.result(client, node_pb2.TaskResult(task_id=b"C" * 16))
    s.take_actions()
    assert s.actors.resend_rows() == 1
    [row] = [a.row for a in s.take_actions() if isinstance(a, PutActor)]
    assert (row.actor_id, row.state, row.name, row.node_id) == (b"A" * 16, ActorState.ALIVE, "counter", NODE)
    assert row.pid == 100 or row.pid == 101
    s.kill_actor(b"A" * 16, no_restart=True)
    s.worker_exited(s.actors.actors[b"A" * 16].worker_id, -9)
    assert _rows(s.take_actions()) == [ActorState.DEAD]
    assert s.actors.resend_rows() == 0 and not _rows(s.take_actions())  # a dead one wrote its row


def _infeasible_actor() -> common_pb2.TaskSpec:
    spec = common_pb2.TaskSpec(task_id=b"E" * 16, name="Other.__init__", num_returns=1,
                               owner_id=DRIVER, actor_id=b"B" * 16, actor_creation=True,
                               actor_options=json.dumps({"class_name": "Other",
                                                         "name": "other"}).encode())
    spec.resources["CPU"] = 8.0
    return spec


def test_an_actor_killed_before_it_starts_fails_its_creation_with_actor_died() -> None:
    s = Node()
    s.submit(DRIVER, _infeasible_actor())  # no node has 8 CPUs: it waits
    s.take_actions()
    assert s.tasks[b"E" * 16].phase == "INFEASIBLE"
    s.kill_actor(b"B" * 16, no_restart=True)
    out = s.take_actions()
    assert _rows(out) == [ActorState.DEAD] and ReleaseActorName("default", "other") in out
    [event] = [a.event for a in out if isinstance(a, ReportEvent)]
    assert event.state == "FAILED" and event.detail == "actor killed before it started"
    [blob] = [a.op.object.inline for a in out if isinstance(a, Send) and a.op.WhichOneof("op") == "object"]
    err = codec.deserialize(blob)
    assert codec.is_error(blob) and isinstance(err, ActorDiedError)
    assert err.actor_id == (b"B" * 16).hex()  # type: ignore[attr-defined]  # a ClusterError field


# ---- the cluster around ---------------------------------------------------------------------


def test_a_new_peer_or_scheduler_gives_infeasible_tasks_another_chance() -> None:
    s = Node()
    spec = common_pb2.TaskSpec(task_id=b"T" * 16, name="big", num_returns=1, owner_id=DRIVER)
    spec.resources["CPU"] = 8.0
    s.submit(DRIVER, spec)
    assert s.tasks[b"T" * 16].phase == "INFEASIBLE"
    s.peer_alive(PEER, common_pb2.NodeLoad(total={"CPU": 16.0}, available={"CPU": 16.0}))
    assert s.tasks[b"T" * 16].phase == "INFEASIBLE"  # no scheduler to place it yet
    s.take_actions()
    s.set_schedulers(True)
    spills: list[Any] = [a for a in s.take_actions() if isinstance(a, Spill)]
    assert [(a.task_id, a.reason) for a in spills] == [(b"T" * 16, SpillReason.NEVER_FITS)]
    s.set_schedulers(True)  # no change: nothing is retried twice
    assert s.take_actions() == []


def test_reap_idle_stops_surplus_idle_workers_as_actions() -> None:
    t = [0.0]
    s = LocalScheduler(NODE, {"CPU": 1.0}, Store(), lambda e: b"e",
                       settings=Settings(idle_worker_s=5.0), clock=lambda: t[0])
    for i in range(3):
        s.worker_starting(bytes([i]) * 16, counted=False)
        s.connect(bytes([10 + i]) * 16, "worker", i, bytes([i]) * 16)
    s.take_actions()
    t[0] = 4.0
    s.reap_idle()
    assert s.take_actions() == []
    t[0] = 6.0
    s.reap_idle()
    # The most recent one stays warm.
    assert s.take_actions() == [StopWorker(bytes([0]) * 16), StopWorker(bytes([1]) * 16)]
