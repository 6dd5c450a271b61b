"""Lineage and ownership in the node's pure state: what a home node keeps, what it re-runs
when a copy is lost, what it drops, and what goes when an owner dies. Driven by method calls
on LocalScheduler; no sockets, no sleeps."""

from __future__ import annotations

from typing import Any

from runtime import _ids
from runtime.config import Settings
from runtime.exceptions import ObjectLostError, OwnerDiedError
from runtime.node.actions import CancelRemote, DropPulled, FreeRemote, ReportEvent, ReportHome, Send, Spill
from runtime.node.state import LocalScheduler
from runtime.protocol import codec, common_pb2, node_pb2

NODE, PEER, DRIVER = b"N" * 16, b"P" * 16, b"D" * 16


class Store:
    def seal(self, oid: bytes, size: int) -> None: ...
    def locate(self, oid: bytes) -> str: return "/shm/" + oid.hex()
    def pin(self, oid: bytes) -> None: ...
    def unpin(self, oid: bytes) -> None: ...
    def free(self, oid: bytes) -> None: ...


def _encode(err: BaseException) -> bytes:
    return codec.serialize(err, error=True).to_bytes()


def _node() -> LocalScheduler:
    s = LocalScheduler(NODE, {"CPU": 1.0}, Store(), _encode, settings=Settings(), clock=lambda: 0.0)
    s.connect(DRIVER, "driver", 1)
    s.set_schedulers(True)
    s.peer_alive(PEER, common_pb2.NodeLoad(total={"CPU": 8.0}, available={"CPU": 8.0}))
    s.take_actions()
    return s


def _tid(i: int) -> bytes:
    return bytes([3, i]) + b"t" * 14


def _ret(i: int) -> bytes:
    return _ids.object_id(_tid(i), 1)


def _run_on_peer(s: LocalScheduler, i: int, *args: bytes, max_retries: int = 3) -> list[Any]:
    """Submit task ``i`` bound to PEER (it spills there), which runs it and keeps its result;
    the actions made meanwhile."""
    spec = common_pb2.TaskSpec(task_id=_tid(i), name=f"f{i}", num_returns=1, owner_id=DRIVER,
                               max_retries=max_retries, arg_refs=list(args))
    spec.resources["CPU"] = 1.0
    spec.strategy.kind, spec.strategy.node_id, spec.strategy.soft = "NODE_AFFINITY", PEER, True
    s.submit(DRIVER, spec)
    actions = s.take_actions()
    assert [a.task_id for a in actions if isinstance(a, Spill)] == [_tid(i)]
    s.spilled(_tid(i), PEER, "gs-0", "AFFINITY")
    s.remote_result(node_pb2.ReportResultsRequest(
        task_id=_tid(i), node_id=PEER,
        returns=[common_pb2.ObjectData(object_id=_ret(i), size=5000, node_id=PEER)]))
    return actions + s.take_actions()


def _chain(s: LocalScheduler, n: int) -> None:
    """f0() -> f1(r0) -> ... on PEER; the driver keeps only the last ref."""
    _run_on_peer(s, 0)
    for i in range(1, n):
        _run_on_peer(s, i, _ret(i - 1))
        s.update_refs(DRIVER, [], [_ret(i - 1)])


def test_a_finished_task_is_kept_while_its_result_is_held_and_dropped_after() -> None:
    s = _node()
    _run_on_peer(s, 0)
    assert len(s.lineage) == 1
    s.update_refs(DRIVER, [], [_ret(0)])
    assert len(s.lineage) == 0
    assert [a.object_id for a in s.take_actions() if isinstance(a, FreeRemote)] == [_ret(0)]


def test_a_chain_keeps_the_lineage_of_freed_links_until_its_end_is_dropped() -> None:
    s = _node()
    _chain(s, 10)
    assert len(s.lineage) == 10  # the links' values were freed, their specs were not
    s.update_refs(DRIVER, [], [_ret(9)])
    assert len(s.lineage) == 0


def test_a_lost_chain_reruns_from_its_first_link_when_read() -> None:
    s = _node()
    _chain(s, 10)
    s.peer_died(PEER)
    assert _ret(9) in s.objects.lost and not s.tasks  # nothing re-runs until it is read
    s.take_actions()
    s.get(DRIVER, [_ret(9)])
    events = [a.event for a in s.take_actions() if isinstance(a, ReportEvent)]
    rebuilt = {e.task_id for e in events if e.state == "RETRYING" and "rebuild" in e.detail}
    assert rebuilt == {_tid(i) for i in range(10)}
    assert all(s.tasks[_tid(i)].spec.attempt == 1 for i in range(10))
    # The first link has no inputs: it goes (to a scheduler: its soft affinity is to the
    # dead node); the others wait for their input.
    assert s.tasks[_tid(0)].phase == "SPILLED" and not s.tasks[_tid(0)].missing
    assert all(s.tasks[_tid(i)].missing == {_ret(i - 1)} for i in range(1, 10))


def test_a_lost_result_of_a_task_out_of_retries_becomes_object_lost() -> None:
    s = _node()
    _run_on_peer(s, 0, max_retries=0)
    s.peer_died(PEER)
    s.take_actions()
    s.get(DRIVER, [_ret(0)])
    [blob] = [a.op.object.inline for a in s.take_actions()
              if isinstance(a, Send) and a.op.WhichOneof("op") == "object"]
    err = codec.deserialize(blob)
    assert isinstance(err, ObjectLostError)
    assert _ret(0).hex() in str(err) and "f0()" in str(err) and "max_retries=0" in str(err)
    assert _ids.short(PEER) in str(err)
    assert not s.tasks


def test_a_nested_object_reported_home_is_known_and_freed_with_its_container() -> None:
    s = _node()
    put = _ids.object_id(b"p" * 16, 0)
    spec = common_pb2.TaskSpec(task_id=_tid(0), name="f0", num_returns=1, owner_id=DRIVER)
    spec.resources["CPU"] = 1.0
    spec.strategy.kind, spec.strategy.node_id = "NODE_AFFINITY", PEER
    s.submit(DRIVER, spec)
    s.spilled(_tid(0), PEER, "gs-0", "AFFINITY")
    s.remote_result(node_pb2.ReportResultsRequest(
        task_id=_tid(0), node_id=PEER,
        returns=[common_pb2.ObjectData(object_id=_ret(0), inline=b"[ref]", size=5, nested_refs=[put])],
        nested=[common_pb2.ObjectData(object_id=put, size=5000, node_id=PEER)]))
    assert s.objects.remote(put).node_id == PEER
    s.take_actions()
    s.update_refs(DRIVER, [], [_ret(0)])
    assert [a.object_id for a in s.take_actions() if isinstance(a, FreeRemote)] == [put]


def test_a_task_run_for_another_node_whose_input_was_lost_goes_back_to_its_home() -> None:
    s = _node()
    other = b"C" * 16
    arg = _ids.object_id(b"a" * 16, 1)
    spec = common_pb2.TaskSpec(task_id=_tid(5), name="f5", num_returns=1, owner_id=DRIVER,
                               arg_refs=[arg], spill_count=1)
    spec.resources["CPU"] = 1.0
    s.accept_forwarded(node_pb2.ForwardTaskRequest(
        spec=spec, args=[common_pb2.ObjectData(object_id=arg, size=5000, node_id=other)],
        home_address="home:1", home_node_id=PEER))
    assert s.tasks[_tid(5)].missing == {arg}  # being pulled from the other node
    s.take_actions()
    s.peer_died(other)
    [report] = [a.request for a in s.take_actions() if isinstance(a, ReportHome)]
    assert report.task_id == _tid(5) and list(report.lost_inputs) == [arg] and not report.returns
    assert _tid(5) not in s.tasks


def test_a_task_handed_back_runs_again_after_its_lost_input_is_rebuilt() -> None:
    s = _node()
    _run_on_peer(s, 0)  # r0 is kept on PEER
    spec = common_pb2.TaskSpec(task_id=_tid(1), name="f1", num_returns=1, owner_id=DRIVER,
                               max_retries=3, arg_refs=[_ret(0)])
    spec.resources["CPU"] = 1.0
    spec.strategy.kind, spec.strategy.node_id, spec.strategy.soft = "NODE_AFFINITY", PEER, True
    s.submit(DRIVER, spec)
    s.spilled(_tid(1), PEER, "gs-0", "AFFINITY")
    s.take_actions()
    # PEER could not get r0 (say, it was lost with a third node): the home rebuilds it first.
    s.remote_result(node_pb2.ReportResultsRequest(task_id=_tid(1), node_id=PEER, lost_inputs=[_ret(0)]))
    events = [(a.event.task_id, a.event.state) for a in s.take_actions() if isinstance(a, ReportEvent)]
    assert (_tid(1), "RETRYING") in events and (_tid(0), "RETRYING") in events
    assert s.tasks[_tid(1)].missing == {_ret(0)} and s.tasks[_tid(1)].spec.attempt == 1


def test_a_dead_drivers_spilled_task_is_cancelled_where_it_runs_and_its_borrowed_object_dropped() -> None:
    s = _node()
    borrower = b"B" * 16
    s.connect(borrower, "driver", 2)
    put = _ids.object_id(b"p" * 16, 0)
    s.put(DRIVER, common_pb2.ObjectData(object_id=put, shm_path="/shm/p", size=5000))
    s.update_refs(borrower, [put], [])  # another driver borrows it
    s.objects.pulled(put, PEER)  # and PEER pulled a copy
    spec = common_pb2.TaskSpec(task_id=_tid(1), name="f1", num_returns=1, owner_id=DRIVER)
    spec.resources["CPU"] = 1.0
    spec.strategy.kind, spec.strategy.node_id = "NODE_AFFINITY", PEER
    s.submit(DRIVER, spec)
    s.spilled(_tid(1), PEER, "gs-0", "AFFINITY")
    s.take_actions()
    s.disconnect(DRIVER)
    actions = s.take_actions()
    assert [(a.node_id, a.task_id, a.force) for a in actions if isinstance(a, CancelRemote)] == [
        (PEER, _tid(1), True)]
    assert _tid(1) not in s.tasks
    [drop] = [a for a in actions if isinstance(a, DropPulled)]
    assert drop.node_id == PEER and drop.data.object_id == put
    assert isinstance(codec.deserialize(drop.data.inline), OwnerDiedError)
    s.get(borrower, [put])
    [blob] = [a.op.object.inline for a in s.take_actions()
              if isinstance(a, Send) and a.op.WhichOneof("op") == "object"]
    err = codec.deserialize(blob)
    assert isinstance(err, OwnerDiedError) and "driver pid 1" in str(err)


def test_an_idle_workers_death_cancels_its_tasks_and_turns_its_borrowed_object_into_an_error() -> None:
    s = _node()
    worker, client = b"W" * 16, b"C" * 16
    s.worker_starting(worker, counted=False)
    s.connect(client, "worker", 7, worker)
    put = _ids.object_id(b"p" * 16, 0)
    s.put(client, common_pb2.ObjectData(object_id=put, shm_path="/shm/p", size=5000))
    s.update_refs(DRIVER, [put], [])  # the driver borrows it (returned inside a result)
    s.update_refs(client, [], [put])
    spec = common_pb2.TaskSpec(task_id=_tid(1), name="f1", num_returns=1, owner_id=client)
    spec.resources["CPU"] = 1.0
    spec.strategy.kind, spec.strategy.node_id = "NODE_AFFINITY", PEER
    s.submit(client, spec)  # a task it submitted, not over (spilled to PEER)
    s.spilled(_tid(1), PEER, "gs-0", "AFFINITY")
    w = s.workers.of_client(client)
    assert w is not None and not w.frames  # idle: it runs nothing
    s.take_actions()
    s.disconnect(client)
    actions = s.take_actions()
    assert [(a.node_id, a.task_id, a.force) for a in actions if isinstance(a, CancelRemote)] == [
        (PEER, _tid(1), True)]
    assert _tid(1) not in s.tasks
    s.get(DRIVER, [put])
    [blob] = [a.op.object.inline for a in s.take_actions()
              if isinstance(a, Send) and a.op.WhichOneof("op") == "object"]
    err = codec.deserialize(blob)
    assert isinstance(err, OwnerDiedError) and "worker pid 7" in str(err) and put.hex() in str(err)
