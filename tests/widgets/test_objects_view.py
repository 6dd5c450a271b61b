"""The Object store section's pure view and its HTML: object and node rows in, tables out.

No cluster, no threads: rows are built by hand.
"""

from __future__ import annotations

from dataclasses import replace

from runtime.state import Change, NodeState, ObjectState, TaskState
from widgets.model import ClusterModel
from widgets.objects_view import created_by, object_store_view
from widgets.render import largest_objects_table, snapshot_html, store_table

N1, N2 = "aa" * 16, "bb" * 16
T1 = "cd" * 16
MiB = 1024 * 1024


def node(nid: str, *, start: float = 1.0, used: int = 0, capacity: int = 100 * MiB, spilled: int = 0,
         spilled_total: int = 0) -> NodeState:
    return NodeState(node_id=nid, address="127.0.0.1:1", hostname="box", alive=True,
                     resources_total={"CPU": 2.0}, resources_available={"CPU": 2.0}, queue_length=0,
                     store_used=used, store_capacity=capacity, num_workers=2, cpu_percent=0.0,
                     memory_used=1, memory_total=2, gpus=(), last_heartbeat=start, death_cause="",
                     start_time=start, pid=1, labels={}, store_spilled=spilled,
                     store_spilled_total=spilled_total)


def obj(prefix: str, index: int, size: int, *holders: str, owner: str | None = None) -> ObjectState:
    return ObjectState(object_id=prefix + index.to_bytes(4, "little").hex(), size=size,
                       locations=holders, spilled=False, owner_id=owner)


OBJECTS = [
    obj("01" * 16, 0, 5 * MiB, N1, owner="ee" * 16),          # an rt.put by this kernel
    obj(T1, 1, 2 * MiB, N1, N2),                               # a task's return value, copied to N2
    obj(T1, 2, 3 * MiB, N2, owner="ff" * 16),                  # another return of the same task
    obj("02" * 16, 0, 200 * 1024, N2),                         # a small put, owner unknown
]


def test_largest_objects_first_with_size_owner_creator_and_holders() -> None:
    v = object_store_view(OBJECTS, [node(N1), node(N2)], task_name={T1: "train"}.get,
                          own_id="ee" * 16, limit=3)
    assert [(r.size, r.owner, r.created_by, r.holders) for r in v.largest] == [
        (5 * MiB, "this kernel", "rt.put", (N1[:6],)),
        (3 * MiB, "ff" * 4, "train() return 2", (N2[:6],)),
        (2 * MiB, "unknown", "train() return 1", (N1[:6], N2[:6])),
    ]
    assert (v.count, v.total_bytes) == (4, 10 * MiB + 200 * 1024)


def test_bytes_per_node_from_heartbeats_and_copies_from_the_objects_table() -> None:
    nodes = [node(N1, used=7 * MiB, spilled=3 * MiB, spilled_total=9 * MiB), node(N2, used=5 * MiB)]
    v = object_store_view(OBJECTS, nodes, label=lambda n: f"node-{n[:2]}" if n else "-")
    n1, n2 = v.nodes
    assert (n1.label, n1.used, n1.capacity, n1.spilled, n1.spilled_total) == (
        "node-aa", 7 * MiB, 100 * MiB, 3 * MiB, 9 * MiB)
    assert (n1.copies, n1.copy_bytes) == (2, 7 * MiB)
    assert (n2.copies, n2.copy_bytes, n2.spilled) == (3, 5 * MiB + 200 * 1024, 0)
    assert v.summary() == ("Object store: 4 objects, 10.2 MiB; 3.0 MiB spilled to disk; "
                           "largest 5.0 MiB (rt.put)")


def test_created_by_reads_the_object_id() -> None:
    assert created_by("01" * 16 + "00000000") == "rt.put"
    assert created_by(T1 + "03000000") == f"task {T1[:6]} return 3"
    assert created_by(T1 + "01000000", {T1: "f"}.get) == "f() return 1"
    assert created_by("nothex") == "unknown"


def test_tables_show_the_numbers_escaped_and_say_when_empty() -> None:
    v = object_store_view(OBJECTS, [node(N1, used=7 * MiB, spilled=MiB)], task_name={T1: "<i>x</i>"}.get)
    largest = largest_objects_table(v)
    assert largest.count('class="cellray-object-row"') == 4
    first = largest.index('class="cellray-object-size"')
    assert f'data-bytes="{5 * MiB}">5.0 MiB<' in largest[first:first + 80]
    assert "<i>x" not in largest and "&lt;i&gt;x&lt;/i&gt;() return 1" in largest
    nodes = store_table(v)
    assert "7.0 MiB / 100.0 MiB (7%)" in nodes and "<td>1.0 MiB</td>" in nodes
    empty = object_store_view([], [])
    assert "no objects in the stores" in largest_objects_table(empty)
    assert "no nodes" in store_table(empty)


def test_the_cluster_model_follows_the_objects_table() -> None:
    m = ClusterModel(max_rows=2)
    m.own_id = "ee" * 16
    task = TaskState(T1, "train", None, "FINISHED", N1, 7, 1.0, 2.0, 3.0, "", 0, None)
    m.apply_all([Change("nodes", N1, node(N1, used=5 * MiB)), Change("tasks", T1, task),
                 *(Change("objects", o.object_id, o, snapshot=True) for o in OBJECTS),
                 Change("", "", None, snapshot_done=True)])
    v = m.view(10.0).objects
    assert [(r.created_by, r.owner) for r in v.largest] == [("rt.put", "this kernel"),
                                                            ("train() return 2", "ff" * 4)]
    # A copy goes away, then the whole object: the view follows.
    moved = replace(OBJECTS[0], locations=(N2,))
    m.apply(Change("objects", moved.object_id, moved))
    assert m.view(10.0).objects.largest[0].holders == (N2[:6],)
    m.apply(Change("objects", moved.object_id, None))
    assert m.view(10.0).objects.count == 3
    assert "<h4>Object store</h4>" in snapshot_html(m.view(10.0), "live")
    # A reset forgets the rows; the fresh snapshot brings them back.
    m.apply(Change("", "", None, reset=True))
    assert m.view(10.0).objects.count == 0
