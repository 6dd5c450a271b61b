"""Where the local scheduler sends work, on its own: spilling only when a peer is less busy,
placement back home, the strategies, actors' creations that move on to a node with room,
and calls to actors that live on other nodes (forwarded in order, retried when that node
dies, handed back when the actor comes to live here). Pure: no sockets, no clock."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from runtime import _ids
from runtime.config import Settings
from runtime.exceptions import ActorDiedError, TaskUnschedulableError
from runtime.node.actions import Action, ForwardCalls, KillRemoteActor, PutActor, Send, Spill, SpillReason
from runtime.node.state import LocalScheduler
from runtime.protocol import codec, common_pb2, gcs_pb2, node_pb2
from runtime.protocol.states import ActorState

NODE, PEER, OTHER, DRIVER = b"N" * 16, b"P" * 16, b"O" * 16, b"D" * 16
ACTOR = b"A" * 16


class Store:
    def __init__(self) -> None:
        self.pins: Counter[bytes] = Counter()

    def seal(self, oid: bytes, size: int) -> None: ...
    def locate(self, oid: bytes) -> str: return "/shm/" + oid.hex()
    def pin(self, oid: bytes) -> None: self.pins[oid] += 1
    def unpin(self, oid: bytes) -> None: self.pins[oid] -= 1
    def free(self, oid: bytes) -> None: ...


class Node(LocalScheduler):
    """A 2-CPU node with two workers, a scheduler and (optionally) peers."""

    def __init__(self, node_id: bytes = NODE, **settings: Any) -> None:
        super().__init__(node_id, {"CPU": 2.0}, Store(), lambda e: codec.serialize(e, error=True).to_bytes(),
                         settings=Settings(**{"spill_threshold": 2, **settings}), clock=lambda: 0.0)
        self.connect(DRIVER, "driver", 1)
        for i in range(2):
            wid = bytes([1, i]) + b"w" * 14
            self.worker_starting(wid, counted=False)
            self.connect(bytes([2, i]) + b"c" * 14, "worker", 100 + i, wid)
        self.set_schedulers(True)
        self.take_actions()

    def peer(self, node_id: bytes, available: float, queue: int = 0, total: float = 2.0) -> None:
        self.peer_alive(node_id, common_pb2.NodeLoad(total={"CPU": total}, available={"CPU": available},
                                                     queue_length=queue))


def _spec(i: int, cpu: float = 1.0, **fields: Any) -> common_pb2.TaskSpec:
    spec = common_pb2.TaskSpec(task_id=bytes([7, i]) + b"t" * 14, name=f"f{i}", num_returns=1,
                               owner_id=DRIVER, function_id=b"fn" * 10, **fields)
    spec.resources["CPU"] = cpu
    return spec


def _submit(s: Node, i: int, cpu: float = 1.0, **fields: Any) -> bytes:
    spec = _spec(i, cpu, **fields)
    s.submit(DRIVER, spec)
    return spec.task_id


def _spills(actions: list[Action]) -> list[tuple[bytes, SpillReason]]:
    return [(a.task_id, a.reason) for a in actions if isinstance(a, Spill)]


def _error(actions: list[Action], task_id: bytes) -> BaseException:
    [blob] = [a.op.object.inline for a in actions if isinstance(a, Send) and a.op.WhichOneof("op") == "object"
              and a.op.object.object_id == _ids.object_id(task_id, 1)]
    err = codec.deserialize(blob)
    assert isinstance(err, BaseException)
    return err


# ---- spilling that helps --------------------------------------------------------------


def test_a_full_queue_spills_only_while_a_peer_is_a_round_less_busy() -> None:
    s = Node()
    s.peer(PEER, available=0, queue=2)  # a round of 2 queued there
    for i in range(8):
        _submit(s, i)
    spilled = _spills(s.take_actions())
    # 2 run here; the queue reaches 2 (the threshold); from then on each task spills while
    # the peer (charged one per task spilled its way) is a whole round less busy than here.
    assert spilled and all(reason == SpillReason.QUEUE_FULL for _, reason in spilled)
    assert s.queue_length() + len(spilled) == 6
    assert abs(s.queue_length() - (2 + len(spilled))) <= 2  # both ends about as busy


def test_a_task_that_cannot_start_here_goes_where_a_peer_has_room_one_per_free_slot() -> None:
    s = Node()
    s.peer(PEER, available=1)
    for i in range(4):  # two run, two wait: a round is queued here
        _submit(s, i)
    assert _spills(s.take_actions()) == []  # what waits less than a round stays
    _submit(s, 4)
    assert [reason for _, reason in _spills(s.take_actions())] == [SpillReason.PEER_HAS_ROOM]
    assert s.queue_length() == 2


def test_a_busy_node_keeps_its_tasks_when_peers_are_busier() -> None:
    s = Node()
    s.peer(PEER, available=0, queue=20)
    for i in range(8):
        _submit(s, i)
    assert _spills(s.take_actions()) == []
    assert s.queue_length() == 6


def test_spills_not_answered_yet_stay_charged_to_their_peer_across_its_rows() -> None:
    s = Node()
    s.peer(PEER, available=0, queue=0)
    for i in range(10):
        _submit(s, i)
    first = _spills(s.take_actions())
    assert len(first) == 3 and s.spill.peers[PEER].in_flight == 3
    s.peer(PEER, available=0, queue=0)  # its next row cannot show the 3 still being placed
    assert s.spill.peers[PEER].queue == 3
    _submit(s, 10)
    _submit(s, 11)
    assert len(_spills(s.take_actions())) == 1  # without the charges kept, both would spill
    for task_id, reason in first:
        s.spilled(task_id, PEER, "gs-0", reason)
    assert s.spill.peers[PEER].in_flight == 1
    s.peer(PEER, available=0, queue=3)  # now its row shows them
    assert s.spill.peers[PEER].queue == 4


def test_a_placed_back_task_runs_here_and_never_spills_for_being_busy_again() -> None:
    s = Node()
    s.peer(PEER, available=1)
    for i in range(5):
        _submit(s, i)
    [(task_id, reason)] = _spills(s.take_actions())
    assert reason == SpillReason.PEER_HAS_ROOM
    s.spilled(task_id, NODE, "gs-0", SpillReason.PEER_HAS_ROOM, "locality: its input is here")
    out = s.take_actions()
    assert s.tasks[task_id].phase in ("READY", "RUNNING") and s.tasks[task_id].spec.spill_count >= 1
    [ev] = [a.event for a in out if hasattr(a, "event") and a.event.task_id == task_id
            and a.event.state == "SCHEDULED"]
    assert "placed back here by gs-0: locality" in ev.detail
    assert _spills(out) == []


def test_the_spilled_event_says_where_and_why() -> None:
    s = Node()
    s.peer(PEER, available=0)
    for i in range(5):
        _submit(s, i)
    [(task_id, _)] = _spills(s.take_actions())
    s.spilled(task_id, PEER, "gs-1", SpillReason.QUEUE_FULL, "locality: est. wait 0.0 ms")
    [ev] = [a.event for a in s.take_actions() if hasattr(a, "event")]
    assert ev.state == "SPILLED" and ev.target_node_id == PEER and ev.scheduler == "gs-1"
    assert ev.detail == f"queue over threshold; placed on node {PEER.hex()[:12]} by gs-1: locality: est. wait 0.0 ms"


# ---- strategies -----------------------------------------------------------------------


def test_spread_tasks_go_to_a_scheduler_even_when_they_could_run_here() -> None:
    s = Node()
    s.peer(PEER, available=2)
    task_id = _submit(s, 0, strategy=common_pb2.SchedulingStrategy(kind="SPREAD"))
    assert _spills(s.take_actions()) == [(task_id, SpillReason.SPREAD)]


def test_affinity_to_this_node_stays_even_with_a_full_queue_and_to_another_node_spills() -> None:
    s = Node()
    s.peer(PEER, available=2)
    here = common_pb2.SchedulingStrategy(kind="NODE_AFFINITY", node_id=NODE)
    for i in range(6):
        _submit(s, i, strategy=here)
    assert _spills(s.take_actions()) == []
    there = common_pb2.SchedulingStrategy(kind="NODE_AFFINITY", node_id=PEER)
    task_id = _submit(s, 9, strategy=there)
    assert _spills(s.take_actions()) == [(task_id, SpillReason.AFFINITY)]
    assert SpillReason.AFFINITY.needs_scheduler and not SpillReason.SPREAD.needs_scheduler


def test_hard_affinity_to_another_node_never_runs_here_before_a_scheduler_is_known() -> None:
    s = Node()
    s.set_schedulers(False)  # just started: no global scheduler known yet
    s.take_actions()
    there = common_pb2.SchedulingStrategy(kind="NODE_AFFINITY", node_id=PEER)
    hard = _submit(s, 1, strategy=there)
    actions = s.take_actions()
    assert _spills(actions) == [(hard, SpillReason.AFFINITY)]  # the spill waits for a scheduler
    assert not [a for a in actions if isinstance(a, Send) and a.op.WhichOneof("op") == "execute"]
    soft = common_pb2.SchedulingStrategy(kind="NODE_AFFINITY", node_id=PEER, soft=True)
    _submit(s, 2, strategy=soft)  # may run elsewhere: here, while no scheduler can place it
    assert _spills(s.take_actions()) == []


def test_an_unschedulable_task_fails_with_the_reason() -> None:
    s = Node()
    s.peer(PEER, available=2)
    task_id = _submit(s, 0, strategy=common_pb2.SchedulingStrategy(kind="NODE_AFFINITY", node_id=OTHER))
    s.take_actions()
    s.unschedulable(task_id, "node 4f4f is not in the cluster")
    err = _error(s.take_actions(), task_id)
    assert isinstance(err, TaskUnschedulableError) and "not in the cluster" in str(err)


# ---- actors placed like tasks ----------------------------------------------------------


def _creation(max_restarts: int = 0, cpu: float = 1.0, task: int = 0xC) -> common_pb2.TaskSpec:
    options = {"class_name": "Counter", "max_restarts": max_restarts, "max_task_retries": 1}
    spec = common_pb2.TaskSpec(task_id=bytes([task]) * 16, name="Counter.__init__", owner_id=DRIVER,
                               actor_id=ACTOR, actor_creation=True, actor_options=json.dumps(options).encode())
    spec.resources["CPU"] = cpu
    return spec


def _call(i: int) -> common_pb2.TaskSpec:
    return common_pb2.TaskSpec(task_id=bytes([9, i]) + b"m" * 14, name="Counter.incr", num_returns=1,
                               owner_id=DRIVER, actor_id=ACTOR)


def _alive(node_id: bytes, restarts: int = 0) -> gcs_pb2.ActorRow:
    return gcs_pb2.ActorRow(actor_id=ACTOR, class_name="Counter", state=ActorState.ALIVE, node_id=node_id,
                            num_restarts=restarts, creation_spec=_creation().SerializeToString())


def _forwarded(actions: list[Action]) -> list[tuple[bytes, list[bytes]]]:
    return [(a.node_id, [c.spec.task_id for c in a.request.calls]) for a in actions if isinstance(a, ForwardCalls)]


def test_an_actor_that_cannot_start_here_moves_to_a_peer_with_room() -> None:
    s = Node()
    s.peer(PEER, available=0)
    for i in range(2):  # the node's two CPUs, held
        _submit(s, i)
    s.submit(DRIVER, _creation())
    assert _spills(s.take_actions()) == []  # no room anywhere yet: it waits here
    s.peer(PEER, available=1)  # the peer's next row shows room
    assert _spills(s.take_actions()) == [(_creation().task_id, SpillReason.ACTOR_BUSY)]


def test_calls_follow_the_actor_to_its_node_in_order() -> None:
    s = Node()
    s.peer(PEER, available=2)
    for i in range(2):
        _submit(s, i)
    s.submit(DRIVER, _creation())
    s.submit(DRIVER, _call(1))
    s.submit(DRIVER, _call(2))
    s.take_actions()
    s.spilled(_creation().task_id, PEER, "gs-0", SpillReason.ACTOR_BUSY)
    s.submit(DRIVER, _call(3))
    assert _forwarded(s.take_actions()) == []  # not alive yet
    s.actor_row(_alive(PEER))
    assert _forwarded(s.take_actions()) == [(PEER, [_call(1).task_id, _call(2).task_id, _call(3).task_id])]
    s.submit(DRIVER, _call(4))
    assert _forwarded(s.take_actions()) == []  # one batch in flight at a time
    s.calls_delivered(ACTOR, True)
    assert _forwarded(s.take_actions()) == [(PEER, [_call(4).task_id])]


def test_calls_wait_when_the_node_says_the_actor_is_not_there() -> None:
    s = Node()
    s.submit(DRIVER, _call(1))
    s.actor_row(_alive(PEER))
    assert _forwarded(s.take_actions()) == [(PEER, [_call(1).task_id])]
    s.calls_delivered(ACTOR, False)
    assert _forwarded(s.take_actions()) == []
    s.actor_row(_alive(OTHER))  # the lookup finds it elsewhere
    assert _forwarded(s.take_actions()) == [(OTHER, [_call(1).task_id])]


def test_unanswered_calls_are_retried_after_the_node_dies_and_the_actor_restarts() -> None:
    s = Node()
    s.peer(PEER, available=2)
    s.submit(DRIVER, _call(1))
    s.submit(DRIVER, _call(2))
    s.actor_row(_alive(PEER))
    s.calls_delivered(ACTOR, True)
    s.take_actions()
    s.peer_died(PEER)
    assert _forwarded(s.take_actions()) == []  # RESTARTING until a row says otherwise
    s.actor_row(_alive(OTHER, restarts=1))
    assert _forwarded(s.take_actions()) == [(OTHER, [_call(1).task_id, _call(2).task_id])]
    assert s.tasks[_call(1).task_id].spec.attempt == 1


def test_calls_fail_once_the_actor_is_dead() -> None:
    s = Node()
    s.submit(DRIVER, _call(1))
    s.take_actions()
    s.actor_row(gcs_pb2.ActorRow(actor_id=ACTOR, class_name="Counter", state=ActorState.DEAD, node_id=PEER,
                                 death_cause="it was killed with kill()"))
    err = _error(s.take_actions(), _call(1).task_id)
    assert isinstance(err, ActorDiedError) and "killed with kill()" in str(err)
    s.submit(DRIVER, _call(2))
    assert isinstance(_error(s.take_actions(), _call(2).task_id), ActorDiedError)


def test_calls_of_a_remote_actor_whose_constructor_raised_carry_that_error_as_cause() -> None:
    s = Node()
    s.submit(DRIVER, _call(1))
    s.take_actions()
    boom = codec.serialize(ValueError("no database"), error=True).to_bytes()
    s.actor_row(gcs_pb2.ActorRow(actor_id=ACTOR, class_name="Counter", state=ActorState.DEAD, node_id=PEER,
                                 death_cause="its constructor raised: ValueError", death_error=boom))
    err = _error(s.take_actions(), _call(1).task_id)
    assert isinstance(err, ActorDiedError) and isinstance(err.__cause__, ValueError)
    assert str(err.__cause__) == "no database"


def test_killing_a_remote_actor_asks_its_node() -> None:
    s = Node()
    s.actor_row(_alive(PEER))
    s.kill_actor(ACTOR, True)
    assert [a for a in s.take_actions() if isinstance(a, KillRemoteActor)] == [KillRemoteActor(PEER, ACTOR, True)]


def test_the_creator_restarts_its_actor_when_the_node_it_lived_on_dies() -> None:
    s = Node()
    s.peer(PEER, available=2)
    for i in range(2):
        _submit(s, i)
    s.submit(DRIVER, _creation(max_restarts=1))
    s.take_actions()
    s.spilled(_creation().task_id, PEER, "gs-0", SpillReason.ACTOR_BUSY)
    s.remote_result(node_pb2.ReportResultsRequest(task_id=_creation().task_id, node_id=PEER))
    s.actor_row(_alive(PEER))
    s.take_actions()
    s.peer_died(PEER)
    rows = [a.row for a in s.take_actions() if isinstance(a, PutActor)]
    assert [(r.state, r.num_restarts, r.node_id) for r in rows] == [(ActorState.RESTARTING, 1, NODE)]
    assert s.tasks[_creation().task_id].spec.attempt == 1  # its creation runs again (here: queued)


def test_a_node_hosting_an_actor_for_another_keeps_its_restart_count() -> None:
    s = Node(node_id=PEER)
    creation = _creation()
    creation.attempt = 2
    s.accept_forwarded(node_pb2.ForwardTaskRequest(spec=creation, home_address="h:1", home_node_id=NODE))
    rows = [a.row for a in s.take_actions() if isinstance(a, PutActor)]
    assert [(r.state, r.num_restarts, r.node_id) for r in rows] == [(ActorState.PENDING, 2, PEER)]


def test_calls_forwarded_here_queue_in_order_and_a_stranger_is_refused() -> None:
    s = Node(node_id=PEER)
    s.accept_forwarded(node_pb2.ForwardTaskRequest(spec=_creation(), home_address="h:1", home_node_id=NODE))
    s.take_actions()
    calls = node_pb2.ForwardActorCallsRequest(actor_id=ACTOR)
    for i in (1, 2):
        calls.calls.add(spec=_call(i), home_address="h:1", home_node_id=NODE)
    assert s.accept_calls(calls)
    assert [t.spec.task_id for t in s.actors.actors[ACTOR].queue] == [_call(1).task_id, _call(2).task_id]
    assert s.accept_calls(calls)  # the same batch again (its answer was lost): not queued twice
    assert len(s.actors.actors[ACTOR].queue) == 2
    stranger = node_pb2.ForwardActorCallsRequest(actor_id=b"Z" * 16)
    assert not s.accept_calls(stranger)


def test_an_unschedulable_actor_dies_with_the_reason() -> None:
    s = Node()
    s.peer(PEER, available=2)
    creation = _creation()
    creation.strategy.kind, creation.strategy.node_id = "NODE_AFFINITY", OTHER
    s.submit(DRIVER, creation)
    s.submit(DRIVER, _call(1))
    assert _spills(s.take_actions()) == [(creation.task_id, SpillReason.AFFINITY)]
    s.unschedulable(creation.task_id, "node 4f4f is dead")
    out = s.take_actions()
    [row] = [a.row for a in out if isinstance(a, PutActor)]
    assert row.state == ActorState.DEAD and "cannot be scheduled: node 4f4f is dead" in row.death_cause
    err = _error(out, _call(1).task_id)
    assert isinstance(err, ActorDiedError) and "is dead" in str(err)
