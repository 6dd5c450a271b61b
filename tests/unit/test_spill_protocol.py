"""The spill/forward protocol as a state machine: several nodes' ``LocalScheduler`` and the
global schedulers' pure state (``ClusterView`` + ``PlacementAttempts``), wired by a harness
that carries every message (Schedule, ForwardTask and its reply, ReportResults, pulls,
frees, heartbeats, worker results) in a seeded random order, so messages are delayed and
reordered. Optionally scheduler replicas are down, a ForwardTask is lost (before the node
took the task, or after: its reply lost), a Schedule reply is lost after the task was
placed (the home asks another replica or runs the task itself), or a node dies midway.
Whatever the interleaving, every task ends exactly once at its home, its result reaches
its owner exactly once, and no node keeps a task, a queue entry, a spill or a forward.

Reports home are delayed here but never lost: ``Peers`` tries them again until the home
takes them or dies (``test_node_peers.py``). Issue 11's stall was a report given up.

No sockets, no threads, no sleeps: one ``random.Random(seed)`` decides everything.
"""
from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from runtime import _ids
from runtime.config import Settings
from runtime.node.actions import (
    FreeRemote,
    Pull,
    ReportEvent,
    ReportHome,
    Send,
    Spill,
    SpillReason,
    StartWorker,
)
from runtime.node.state import LocalScheduler
from runtime.protocol import codec, common_pb2, gcs_pb2, node_pb2
from runtime.scheduler.policies import make_policy
from runtime.scheduler.state import ClusterView, Placement, PlacementAttempts

DRIVER = b"D" * 16


class Store:
    """The shared-memory store, reduced to what the local scheduler calls."""

    def seal(self, oid: bytes, size: int) -> None: ...
    def locate(self, oid: bytes) -> str: return "/shm/" + oid.hex()
    def pin(self, oid: bytes) -> None: ...
    def unpin(self, oid: bytes) -> None: ...
    def free(self, oid: bytes) -> None: ...


def _encode(err: BaseException) -> bytes:
    return codec.serialize(err, error=True).to_bytes()


def _node_id(i: int) -> bytes:
    return bytes([0xA0 + i]) * 16


def _task_id(i: int) -> bytes:
    return b"t" + i.to_bytes(4, "big") + b"t" * 11


@dataclass
class Faults:
    """What may go wrong, as probabilities per message."""

    replica_down: float = 0.0  #: a Schedule call finds its replica down (the home tries another)
    forward_lost: float = 0.0  #: a ForwardTask never reaches its node (the scheduler tries another)
    reply_lost: float = 0.0  #: a node took a ForwardTask but the scheduler saw it fail
    #: a replica placed the task but the home saw its Schedule call fail (a deadline)
    schedule_reply_lost: float = 0.0


@dataclass
class FakeWorker:
    node: int
    client_id: bytes
    tasks: deque[bytes] = field(default_factory=deque)
    stepping: bool = False  #: a message to finish its first task is on its way


class Harness:
    """``nodes`` nodes of ``cpus`` CPUs each, ``replicas`` scheduler replicas, the driver
    connected to the first ``drivers_on`` nodes, and a bag of messages delivered in random
    order. Keywords beyond these are ``Settings`` fields of every node."""

    def __init__(self, seed: int, *, nodes: int = 3, cpus: int = 1, replicas: int = 2,
                 faults: Faults | None = None, drivers_on: int = 1, **settings_: Any) -> None:
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        settings = Settings(**{"spill_threshold": 2, **settings_})
        self.nodes = [LocalScheduler(_node_id(i), {"CPU": float(cpus)}, Store(), _encode,
                                     settings=settings, clock=lambda: 0.0)
                      for i in range(nodes)]
        self.index = {n.node_id: i for i, n in enumerate(self.nodes)}
        self.views = [ClusterView(make_policy("locality", rng=random.Random(seed * 31 + r)))
                      for r in range(replicas)]
        self.bag: list[Callable[[], None]] = []
        self.waiting: list[Callable[[], None]] = []  # Schedule calls waiting for a view change
        self.workers: dict[bytes, FakeWorker] = {}
        self.executed: Counter[bytes] = Counter()
        self.delivered: Counter[bytes] = Counter()  # return object id -> times sent to the driver
        self.ended: Counter[bytes] = Counter()  # task id -> FINISHED/FAILED events at its home
        self.homes: dict[bytes, int] = {}
        self._next_worker = 0
        self.dead: set[int] = set()
        for i, node in enumerate(self.nodes):
            if i < drivers_on:
                node.connect(DRIVER, "driver", 1)
            node.set_schedulers(True)
            for j, other in enumerate(self.nodes):
                if j != i:
                    node.peer_alive(other.node_id, common_pb2.NodeLoad(total={"CPU": float(cpus)}))
            for _ in range(cpus):
                self._start_worker(i)
        for r in range(replicas):
            for i in range(nodes):
                self._heartbeat(i, r)
        self._drain_all()

    # ---- the nodes' actions become messages ----------------------------------------

    def _start_worker(self, i: int, counted: bool = False) -> None:
        n = self._next_worker = self._next_worker + 1
        wid, cid = b"w" + n.to_bytes(4, "big") + b"w" * 11, b"c" + n.to_bytes(4, "big") + b"c" * 11
        self.workers[cid] = FakeWorker(i, cid)
        node = self.nodes[i]
        node.worker_starting(wid, counted=counted)
        node.connect(cid, "worker", 1000 + n, wid)

    def _drain_all(self) -> None:
        for i in range(len(self.nodes)):
            self._drain(i)

    def _drain(self, i: int) -> None:
        for action in self.nodes[i].take_actions():
            self._carry(i, action)

    def _carry(self, i: int, action: Any) -> None:
        if isinstance(action, Send):
            self._send(i, action)
        elif isinstance(action, StartWorker):
            self.bag.append(lambda: self._start_worker(i, counted=True))
        elif isinstance(action, Spill):
            replicas = list(range(len(self.views)))
            self.rng.shuffle(replicas)
            self.bag.append(lambda: self._schedule(i, action, replicas))
        elif isinstance(action, ReportHome):
            home = int(action.address.removeprefix("node-"))
            req = node_pb2.ReportResultsRequest()
            req.CopyFrom(action.request)
            self.bag.append(lambda: self._at(home, lambda n: n.remote_result(req)))
        elif isinstance(action, Pull):
            src = self.index[action.node_id]
            self.bag.append(lambda: self._pull(i, src, action.object_id))
        elif isinstance(action, FreeRemote):
            to, me = self.index[action.node_id], self.nodes[i].node_id
            self.bag.append(lambda: self._at(to, lambda n: n.release_remote_holds([action.object_id], me)))
        elif isinstance(action, ReportEvent):
            ev = action.event
            if ev.state in ("FINISHED", "FAILED") and self.homes.get(ev.task_id) == i:
                self.ended[ev.task_id] += 1

    def _send(self, i: int, action: Send) -> None:
        kind = action.op.WhichOneof("op")
        if action.client_id == DRIVER:
            if kind == "object":
                self.delivered[action.op.object.object_id] += 1
            return
        w = self.workers.get(action.client_id)
        if w is None or kind != "execute":
            return
        w.tasks.append(action.op.execute.spec.task_id)
        if not w.stepping:
            w.stepping = True
            self.bag.append(lambda: self._work(w))

    def _at(self, i: int, event: Callable[[LocalScheduler], None]) -> None:
        if i in self.dead:
            return  # a message to a dead node is lost
        event(self.nodes[i])
        self._drain(i)

    def kill(self, i: int) -> None:
        """Node ``i`` dies: what it holds is gone, the others and the schedulers hear of it."""
        self.dead.add(i)
        dead = self.nodes[i]
        for r in range(len(self.views)):
            self.views[r].update(gcs_pb2.NodeRow(node_id=dead.node_id, address=f"node-{i}", alive=False,
                                                 load=dead.load()))
        for j in range(len(self.nodes)):
            if j not in self.dead:
                self.bag.append(lambda j=j: self._at(j, lambda n: n.peer_died(dead.node_id)))

    # ---- workers -------------------------------------------------------------------

    def _work(self, w: FakeWorker) -> None:
        """``w`` finishes the first task it was sent (tasks sent ahead run in order)."""
        task_id = w.tasks.popleft()
        if w.node in self.dead:
            return
        self.executed[task_id] += 1
        ret = common_pb2.ObjectData(object_id=_ids.object_id(task_id, 1), inline=b"v", size=1)
        self._at(w.node, lambda n: n.result(w.client_id, node_pb2.TaskResult(task_id=task_id, returns=[ret])))
        if w.tasks:
            self.bag.append(lambda: self._work(w))
        else:
            w.stepping = False

    def _pull(self, i: int, src: int, oid: bytes) -> None:
        source = self.nodes[src].pull_source(oid) if src not in self.dead else None
        if source is None:
            self._at(i, lambda n: n.pull_failed(oid, "not there"))
            return
        data = common_pb2.ObjectData(object_id=oid, inline=source.inline or b"", size=source.size)
        self._at(i, lambda n: n.pulled(data))

    # ---- the global schedulers -----------------------------------------------------

    def _heartbeat(self, i: int, r: int) -> None:
        if i in self.dead:
            return
        node = self.nodes[i]
        self.views[r].update(gcs_pb2.NodeRow(node_id=node.node_id, address=f"node-{i}", alive=True,
                                             load=node.load()))

    def _schedule(self, home: int, action: Spill, replicas: list[int]) -> None:
        """The home's Schedule call reaches the next replica on its list (``Peers._spill``)."""
        if not replicas:  # every replica failed
            if action.reason.needs_scheduler:
                self.waiting.append(lambda: self._schedule(home, action, list(range(len(self.views)))))
            else:
                self._at(home, lambda n: n.spill_failed(action.task_id))
            return
        r, rest = replicas[0], replicas[1:]
        if self.rng.random() < self.faults.replica_down:
            self.bag.append(lambda: self._schedule(home, action, rest))
            return
        req = action.request
        forward = node_pb2.ForwardTaskRequest(spec=req.spec, args=req.args, home_address=f"node-{home}",
                                              home_node_id=req.from_node_id, scheduler=f"gs-{r}",
                                              reason=req.reason)
        attempts = PlacementAttempts(self.views[r], dict(req.spec.resources), req.inputs,
                                     home=req.from_node_id, home_load=req.home_load)
        self._place(home, action, rest, r, attempts, forward)

    def _place(self, home: int, action: Spill, rest: list[int], r: int, attempts: PlacementAttempts,
               forward: node_pb2.ForwardTaskRequest) -> None:
        """One step of ``SchedulerService.Schedule``."""
        step = attempts.next()
        if not isinstance(step, Placement):  # Wait: tried again when the view changes
            self.waiting.append(lambda: self._place(home, action, rest, r, attempts, forward))
            return
        if step.node_id == action.request.from_node_id:  # back home: the reply says so
            self._reply(home, action, rest, r, step.node_id)
            return
        target = self.index[step.node_id]
        self.bag.append(lambda: self._forward(home, action, rest, r, attempts, forward, step, target))

    def _forward(self, home: int, action: Spill, rest: list[int], r: int, attempts: PlacementAttempts,
                 forward: node_pb2.ForwardTaskRequest, step: Placement, target: int) -> None:
        """The ForwardTask call reaches its node (or is lost on the way, or its reply is)."""
        roll = self.rng.random()
        if roll >= self.faults.forward_lost:
            req = node_pb2.ForwardTaskRequest()
            req.CopyFrom(forward)
            self._at(target, lambda n: n.accept_forwarded(req))
            if roll < self.faults.forward_lost + self.faults.reply_lost:
                roll = 0.0  # the node took it, but the scheduler sees a failure
        if roll < self.faults.forward_lost + self.faults.reply_lost:
            def retry() -> None:
                attempts.failed(step)
                self._place(home, action, rest, r, attempts, forward)
            self.bag.append(retry)
            return
        self._reply(home, action, rest, r, step.node_id)

    def _reply(self, home: int, action: Spill, rest: list[int], r: int, node_id: bytes) -> None:
        """The Schedule reply reaches the home (or is lost: the home tries another replica)."""
        if self.rng.random() < self.faults.schedule_reply_lost:
            self.bag.append(lambda: self._schedule(home, action, rest))
            return
        scheduler = f"gs-{r}"
        self.bag.append(lambda: self._at(home, lambda n: n.spilled(action.task_id, node_id, scheduler,
                                                                   action.reason)))

    # ---- running it ----------------------------------------------------------------

    def submit(self, count: int, on: int = 0, with_arg: bool = False) -> list[bytes]:
        """``count`` tasks submitted by the driver on node ``on`` (``with_arg``: each takes
        an object the driver put there as its argument)."""
        ids = []
        for _ in range(count):
            task_id = _task_id(len(self.homes))
            spec = common_pb2.TaskSpec(task_id=task_id, name="noop", num_returns=1, owner_id=DRIVER,
                                       function_id=b"fn" * 10, max_retries=3)
            spec.resources["CPU"] = 1.0
            arg = _ids.object_id(b"a" + task_id[1:], 0)
            if with_arg:
                spec.arg_refs.append(arg)
            self.homes[task_id] = on
            self.bag.append(lambda spec=spec, arg=arg: self._at(on, lambda n: self._submit(n, spec, arg)))
            ids.append(task_id)
        return ids

    @staticmethod
    def _submit(node: LocalScheduler, spec: common_pb2.TaskSpec, arg: bytes) -> None:
        if spec.arg_refs:  # the driver puts the argument, submits, then drops its own ref
            node.put(DRIVER, common_pb2.ObjectData(object_id=arg, inline=b"in", size=2))
        node.submit(DRIVER, spec)
        if spec.arg_refs:
            node.update_refs(DRIVER, [], [arg])

    def run(self, max_steps: int = 200_000, kill: int | None = None, kill_at: int = 0) -> int:
        """Deliver messages in random order until none is left; the steps taken. ``kill``:
        that node dies after ``kill_at`` steps."""
        rng = self.rng
        for steps in range(max_steps):
            if kill is not None and steps == kill_at:
                self.kill(kill)
            if rng.random() < 0.05 or (not self.bag and self.waiting):
                self._heartbeat(rng.randrange(len(self.nodes)), rng.randrange(len(self.views)))
                waiting, self.waiting = self.waiting, []
                self.bag.extend(waiting)
            if not self.bag:
                return steps
            k = rng.randrange(len(self.bag))
            self.bag[k], self.bag[-1] = self.bag[-1], self.bag[k]
            self.bag.pop()()
        raise AssertionError(f"still {len(self.bag)} messages after {max_steps} steps")

    def check(self, ids: list[bytes], exactly_once: bool = True) -> None:
        """Every task ended once at home, its result reached the driver once, nothing is left."""
        lost = [i.hex()[:10] for i in ids if self.delivered[_ids.object_id(i, 1)] == 0]
        twice = [i.hex()[:10] for i in ids if self.delivered[_ids.object_id(i, 1)] > 1]
        assert not lost and not twice, (
            f"results lost {lost[:5]} ({len(lost)}), twice {twice[:5]} ({len(twice)})")
        assert all(self.ended[i] == 1 for i in ids), "a task ended more than once at its home"
        never = [i for i in ids if not self.executed[i]]
        assert not never, f"{len(never)} tasks ended without running"
        if exactly_once:
            again = {i.hex()[:10]: n for i, n in self.executed.items() if n > 1}
            assert not again, f"tasks run more than once: {again}"
        for i, node in enumerate(self.nodes):
            if i in self.dead:
                continue
            left = {t.spec.task_id.hex()[:10]: str(t.phase) for t in node.tasks.values()}
            assert not left, f"node {i} still holds tasks {left}"
            assert node.queue_length() == 0, f"node {i} still queues {node.queue_length()}"
            sp = node.spill
            assert not sp.spilled_to and not sp.forwarded and not sp.infeasible, (
                f"node {i}: spilled_to {len(sp.spilled_to)}, forwarded {len(sp.forwarded)}, "
                f"infeasible {len(sp.infeasible)}")
        assert not self.waiting


SEEDS = range(20)


@pytest.mark.parametrize("seed", SEEDS)
def test_reordered_messages_end_every_task_exactly_once(seed: int) -> None:
    h = Harness(seed, nodes=3, cpus=1)
    ids = h.submit(60)
    h.run()
    h.check(ids)


@pytest.mark.parametrize("seed", SEEDS)
def test_failing_replicas_end_every_task_exactly_once(seed: int) -> None:
    h = Harness(seed, nodes=4, cpus=2, replicas=3, faults=Faults(replica_down=0.3))
    ids = h.submit(80)
    h.run()
    h.check(ids)


@pytest.mark.parametrize("seed", SEEDS)
def test_lost_forwards_and_replies_lose_no_task(seed: int) -> None:
    """A ForwardTask whose reply is lost may make a task run twice (on two nodes), never
    zero times, and its home ends it once."""
    h = Harness(seed, nodes=4, cpus=1, replicas=2,
                faults=Faults(replica_down=0.1, forward_lost=0.15, reply_lost=0.15))
    ids = h.submit(80)
    h.run()
    h.check(ids, exactly_once=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_lost_schedule_replies_lose_no_task(seed: int) -> None:
    """A replica forwards the task, but the home sees its Schedule call fail and asks
    another one, or runs the task itself: it may run twice, and ends once at home. The copy
    queued at home must not start once the other copy's result ended the task (its
    arguments are released by then)."""
    h = Harness(seed, nodes=3, cpus=1, replicas=2, pipeline_depth=1,  # tasks queue READY at home
                faults=Faults(schedule_reply_lost=0.5, replica_down=0.3))
    ids = h.submit(60, with_arg=True)
    h.run()
    h.check(ids, exactly_once=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_node_dying_midway_loses_no_task(seed: int) -> None:
    """What ran or waited on the dead node runs again elsewhere (or at home); results it
    had not reported yet are not waited for."""
    h = Harness(seed, nodes=4, cpus=1, replicas=2, faults=Faults(schedule_reply_lost=0.1))
    ids = h.submit(80, with_arg=seed % 2 == 0)
    h.run(kill=1 + seed % 3, kill_at=50 + 10 * seed)
    h.check(ids, exactly_once=False)


@pytest.mark.parametrize("seed", range(5))
def test_tasks_from_every_node_at_once(seed: int) -> None:
    h = Harness(seed, nodes=4, cpus=1, replicas=2, drivers_on=4)
    ids = [t for i in range(4) for t in h.submit(40, on=i)]
    h.run()
    h.check(ids)
