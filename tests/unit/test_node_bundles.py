"""Placement-group bundles on a node (``runtime.node.bundles``), through the pure
``LocalScheduler``: prepare all or nothing, commit, release (what runs in a bundle stops)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from runtime import _ids
from runtime.config import Settings
from runtime.node.actions import KillWorker, Send
from runtime.node.bundles import check_bundles, waits_for_group
from runtime.node.state import LocalScheduler
from runtime.protocol import bundles, codec, common_pb2, gcs_pb2, node_pb2

NODE, DRIVER = b"N" * 16, b"D" * 16
PG = bytes.fromhex("ab" * 16)


class Store:
    def seal(self, oid: bytes, size: int) -> None: ...
    def locate(self, oid: bytes) -> str:
        return "/shm/" + oid.hex()
    def pin(self, oid: bytes) -> None: ...
    def unpin(self, oid: bytes) -> None: ...
    def free(self, oid: bytes) -> None: ...


def _node(**resources: float) -> LocalScheduler:
    s = LocalScheduler(NODE, dict(resources), Store(), lambda e: codec.serialize(e, error=True).to_bytes(),
                       settings=Settings(), clock=lambda: 0.0)
    s.connect(DRIVER, "driver", 1)
    s.take_actions()
    return s


def _worker(s: LocalScheduler, i: int) -> bytes:
    wid = bytes([1, i]) + b"w" * 14
    s.worker_starting(wid, counted=False)
    s.connect(bytes([2, i]) + b"c" * 14, "worker", 100 + i, wid)
    return wid


def _bundle(index: int, **resources: float) -> common_pb2.Bundle:
    return common_pb2.Bundle(placement_group_id=PG, index=index, resources=resources)


def _group_task(i: int, index: int, **resources: float) -> common_pb2.TaskSpec:
    spec = common_pb2.TaskSpec(task_id=bytes([3, i]) + b"t" * 14, name=f"f{i}", num_returns=1,
                               owner_id=DRIVER, function_id=b"fn" * 10)
    spec.resources.update(bundles.task_resources(resources, PG, index))
    spec.strategy.kind, spec.strategy.placement_group_id, spec.strategy.bundle_index = (
        "PLACEMENT_GROUP", PG, index)
    return spec


def _executed(actions: list[Any]) -> list[bytes]:
    return [a.op.execute.spec.task_id for a in actions
            if isinstance(a, Send) and a.op.WhichOneof("op") == "execute"]


def test_prepare_is_all_or_nothing_and_repeatable() -> None:
    s = _node(CPU=4)
    why = s.bundles.prepare([_bundle(0, CPU=2), _bundle(1, CPU=3)])
    assert "need {CPU: 5} but this node has {CPU: 4} free now" in why
    assert s.resources.available["CPU"] == 4 and len(s.bundles) == 0
    assert s.bundles.prepare([_bundle(0, CPU=2), _bundle(1, CPU=1)]) == ""
    assert s.bundles.prepare([_bundle(0, CPU=2), _bundle(1, CPU=1)]) == ""  # a repeated call
    assert s.resources.available["CPU"] == 1
    assert s.bundles.statistics() == {"bundles_prepared": 2, "bundles_committed": 0}


def test_commit_adds_the_bundles_own_resources_to_the_load() -> None:
    s = _node(CPU=4)
    assert "were not prepared here" in s.bundles.commit([_bundle(0, CPU=2)])
    s.bundles.prepare([_bundle(0, CPU=2), _bundle(1, CPU=1)])
    assert s.bundles.commit([_bundle(0, CPU=2), _bundle(1, CPU=1)]) == ""
    assert s.bundles.commit([_bundle(0, CPU=2)]) == ""  # repeated: nothing more
    load = s.load()
    hexid = PG.hex()
    assert load.total["CPU"] == 4 and load.available["CPU"] == 1
    assert load.total[f"CPU_group_0_{hexid}"] == 2 and load.total[f"CPU_group_1_{hexid}"] == 1
    assert load.available[f"CPU_group_{hexid}"] == 3
    assert load.total[f"bundle_group_{hexid}"] == 2 * bundles.BUNDLE_UNITS


def test_tasks_of_a_bundle_run_on_its_resources_only() -> None:
    s = _node(CPU=4)
    s.bundles.prepare([_bundle(0, CPU=1)])
    s.bundles.commit([_bundle(0, CPU=1)])
    _worker(s, 0)
    _worker(s, 1)
    s.take_actions()
    first, second = _group_task(0, 0, CPU=1), _group_task(1, 0, CPU=1)
    s.submit(DRIVER, first)
    s.submit(DRIVER, second)
    s.take_actions()
    # The bundle has 1 CPU: one task runs, the other waits for it (at most sent ahead to
    # the busy worker, to start when the first ends); the node's other CPUs stay free.
    running = [w.frames[0].task_id for w in s.workers.workers.values() if w.frames]
    assert running == [first.task_id]
    assert s.resources.available[f"CPU_group_0_{PG.hex()}"] == 0
    assert s.resources.available["CPU"] == 3


def test_releasing_a_prepared_bundle_gives_its_resources_back() -> None:
    s = _node(CPU=2, GPU=2)
    s.bundles.prepare([_bundle(0, CPU=1, GPU=1)])
    assert s.resources.gpu_free == [0.0, 1.0]
    s.bundles.release([_bundle(0, CPU=1, GPU=1)])
    s.bundles.release([_bundle(0, CPU=1, GPU=1)])  # repeated: nothing more
    assert s.resources.available == {"CPU": 2, "GPU": 2} and s.resources.gpu_free == [1.0, 1.0]


def test_releasing_a_committed_bundle_stops_what_runs_in_it() -> None:
    s = _node(CPU=2)
    s.bundles.prepare([_bundle(0, CPU=1)])
    s.bundles.commit([_bundle(0, CPU=1)])
    wid = _worker(s, 0)
    s.take_actions()
    spec = _group_task(0, 0, CPU=1)
    s.submit(DRIVER, spec)
    assert _executed(s.take_actions()) == [spec.task_id]
    s.bundles.release([_bundle(0, CPU=1)])
    assert [a.worker_id for a in s.take_actions() if isinstance(a, KillWorker)] == [wid]
    assert s.resources.total == {"CPU": 2}
    s.worker_exited(wid, -9)
    assert spec.task_id not in s.tasks  # cancelled: not retried into a bundle that is gone
    assert s.resources.available["CPU"] == 2
    assert all(abs(v) < 1e-9 for k, v in s.resources.available.items() if k != "CPU")
    s.bundles.prepare([_bundle(1, CPU=2)])
    s.bundles.commit([_bundle(1, CPU=2)])  # the leftovers of the old names are gone
    assert not [k for k in s.resources.available if "_group_0_" in k]


def test_malformed_bundles_and_the_waiting_message() -> None:
    assert check_bundles([_bundle(0, CPU=1)]) == ""
    assert "placement_group_id" in check_bundles([common_pb2.Bundle(index=0)])
    assert "must be a finite amount >= 0" in check_bundles([_bundle(0, CPU=-1)])
    assert "printable" in check_bundles([_bundle(0, **{"\x00\x01": 1})])
    assert waits_for_group(common_pb2.TaskSpec(name="f")) == ""
    assert f"bundle 0 of placement group {PG.hex()}" in waits_for_group(_group_task(0, 0, CPU=1))


def test_a_task_asking_for_a_bundles_gpus_gets_that_bundles_gpu_ids() -> None:
    s = _node(CPU=4, GPU=2)
    s.bundles.prepare([_bundle(0, CPU=1)])  # takes no GPU
    s.bundles.prepare([_bundle(1, CPU=1, GPU=1)])
    s.bundles.commit([_bundle(0, CPU=1), _bundle(1, CPU=1, GPU=1)])
    reserved = s.bundles.reserved[(PG, 1)].gpu_ids
    assert reserved == [0] and s.resources.gpu_free == [0.0, 1.0]
    wid = _worker(s, 0)
    s.take_actions()
    spec = _group_task(0, 1, CPU=1, GPU=1)
    s.submit(DRIVER, spec)
    sent = [a.op.execute for a in s.take_actions()
            if isinstance(a, Send) and a.op.WhichOneof("op") == "execute"]
    assert [list(ex.gpu_ids) for ex in sent] == [reserved]
    s.result(bytes([2, 0]) + b"c" * 14, _result(spec.task_id))
    assert s.resources.group_gpu_use == {}
    s.bundles.release([_bundle(1, CPU=1, GPU=1)])
    assert s.resources.gpu_free == [1.0, 1.0] and s.resources.bundle_gpus == {}
    assert wid in s.workers.workers


def _result(task_id: bytes) -> node_pb2.TaskResult:
    ret = common_pb2.ObjectData(object_id=_ids.object_id(task_id, 1), inline=b"v", size=1)
    return node_pb2.TaskResult(task_id=task_id, returns=[ret])


def _row(state: str, *placed: bytes) -> gcs_pb2.PlacementGroupRow:
    row = gcs_pb2.PlacementGroupRow(placement_group_id=PG, state=state)
    for i, node in enumerate(placed):
        row.bundles.add(index=i, node_id=node, resources={"CPU": 1})
    return row


def test_bundles_no_group_places_here_are_orphans_the_rest_stay() -> None:
    other = b"O" * 16
    s = _node(CPU=4)
    s.bundles.prepare([_bundle(0, CPU=1), _bundle(1, CPU=1)])
    late = time.monotonic() + 1.0
    assert s.bundles.unchecked_since(late) == {PG}
    assert s.bundles.unchecked_since(0.0) == set()
    # Placed here, or not yet placed anywhere (the GCS is between its two phases): kept.
    asked = time.monotonic()
    assert s.bundles.orphans({PG: _row("CREATED", NODE, b"")}, NODE, late) == []
    assert s.bundles.unchecked_since(asked) == set()  # checked now: not asked about again soon
    assert s.bundles.orphans({}, NODE, late + 1) == []  # not asked about: not judged
    later = time.monotonic() + 2.0
    assert [b.index for b in s.bundles.orphans({PG: _row("CREATED", NODE, other)}, NODE, later)] == [1]
    assert [b.index for b in s.bundles.orphans({PG: _row("CREATED", NODE)}, NODE, later)] == [1]
    assert [b.index for b in s.bundles.orphans({PG: _row("REMOVED", NODE, NODE)}, NODE, later)] == [0, 1]
    orphans = s.bundles.orphans({PG: None}, NODE, later)
    assert [b.index for b in orphans] == [0, 1]
    s.bundles.release(orphans)
    assert s.resources.available["CPU"] == 4 and len(s.bundles) == 0


def test_find_orphans_asks_only_about_groups_held_long_enough() -> None:
    s = _node(CPU=4)
    s.bundles.prepare([_bundle(0, CPU=1)])
    asked: list[bytes] = []

    async def unknown(pg: bytes) -> gcs_pb2.PlacementGroupRow | None:
        asked.append(pg)
        return None

    assert asyncio.run(s.bundles.find_orphans(unknown, NODE, 3600.0)) == []
    assert asked == []
    found = asyncio.run(s.bundles.find_orphans(unknown, NODE, -1.0))
    assert asked == [PG] and [(b.placement_group_id, b.index) for b in found] == [(PG, 0)]
