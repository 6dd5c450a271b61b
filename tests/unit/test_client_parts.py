"""The driver's client in parts: the outbox, the object table, the hosts, worker cancels.

No cluster: the outbox runs on a private event loop, the object table is driven by hand,
and a fake host stands for a worker that lends its CPU while a task waits.
"""

from __future__ import annotations

import ast
import asyncio
import threading
import time
from pathlib import Path

import pytest

from runtime.api._host import DriverHost, Host
from runtime.api._objects import ObjectTable
from runtime.api._outbox import Outbox
from runtime.exceptions import ClientClosedError
from runtime.protocol import common_pb2, node_pb2
from runtime.worker.cancels import Cancels

ROOT = Path(__file__).resolve().parents[2]


def _drain(outbox: Outbox, loop: asyncio.AbstractEventLoop) -> list[node_pb2.ClientOp]:
    """The ops of the first batch after the hello."""

    async def read() -> list[node_pb2.ClientOp]:
        stream = outbox.batches(node_pb2.ClientOp())
        await stream.__anext__()  # the hello
        batch = await asyncio.wait_for(stream.__anext__(), 5)
        await stream.aclose()
        return list(batch.ops)

    return loop.run_until_complete(read())


def _get_op(i: int) -> node_pb2.ClientOp:
    op = node_pb2.ClientOp()
    op.get.object_ids.append(bytes([i]))
    return op


def test_outbox_coalesces_ref_changes_in_order_with_other_ops() -> None:
    loop = asyncio.new_event_loop()
    try:
        outbox = Outbox(loop)
        loop.run_until_complete(asyncio.sleep(0))
        outbox.attach()
        outbox.send(_get_op(1))
        outbox.add_ref(b"a")
        outbox.remove_ref(b"b")
        outbox.send(_get_op(2))
        outbox.remove_ref(b"c")
        ops = _drain(outbox, loop)
    finally:
        loop.close()
    kinds = [op.WhichOneof("op") for op in ops]
    assert kinds == ["get", "refs", "get", "refs"]
    assert list(ops[1].refs.add) == [b"a"] and list(ops[1].refs.remove) == [b"b"]
    assert list(ops[3].refs.remove) == [b"c"]


class _Recorder:
    """An outbox that keeps what it is given."""

    def __init__(self) -> None:
        self.ops: list[node_pb2.ClientOp] = []
        self.added: list[bytes] = []
        self.removed: list[bytes] = []

    def send(self, op: node_pb2.ClientOp) -> None:
        self.ops.append(op)

    def add_ref(self, oid: bytes) -> None:
        self.added.append(oid)

    def remove_ref(self, oid: bytes) -> None:
        self.removed.append(oid)


def _table() -> tuple[ObjectTable, _Recorder]:
    rec = _Recorder()
    return ObjectTable(rec), rec  # type: ignore[arg-type]  # duck-typed outbox


def _ok() -> None:
    return None


def test_refs_are_announced_once_and_the_last_drop_frees_the_data() -> None:
    table, rec = _table()
    table.incref(b"x", announce=True)
    table.incref(b"x", announce=True)
    table.arrived(common_pb2.ObjectData(object_id=b"x", inline=b"1"))
    table.decref(b"x")
    assert table.data(b"x") is not None and rec.removed == []
    table.decref(b"x")
    assert table.data(b"x") is None
    assert rec.added == [b"x"] and rec.removed == [b"x"]


def test_an_object_nobody_refers_to_is_not_kept() -> None:
    table, _ = _table()
    table.arrived(common_pb2.ObjectData(object_id=b"y", inline=b"1"))
    assert table.data(b"y") is None


def test_wait_asks_once_and_wakes_when_the_object_arrives() -> None:
    table, rec = _table()
    table.incref(b"z", announce=False)

    def deliver() -> None:
        time.sleep(0.05)
        table.arrived(common_pb2.ObjectData(object_id=b"z", inline=b"1"))
        table.wake()

    threading.Thread(target=deliver).start()
    assert table.wait([b"z"], 1, 5.0, _ok, DriverHost()) == [b"z"]
    assert [list(op.get.object_ids) for op in rec.ops] == [[b"z"]]


def test_wait_returns_what_is_ready_at_the_deadline() -> None:
    table, _ = _table()
    table.incref(b"a", announce=False)
    table.arrived(common_pb2.ObjectData(object_id=b"a", inline=b"1"))
    started = time.monotonic()
    assert table.wait([b"a", b"b"], 2, 0.1, _ok, DriverHost()) == [b"a"]
    assert time.monotonic() - started < 2


def test_wait_raises_what_the_check_raises() -> None:
    table, _ = _table()

    def closed() -> None:
        raise ClientClosedError("closed")

    with pytest.raises(ClientClosedError):
        table.wait([b"q"], 1, None, closed, DriverHost())


class _LendingHost(DriverHost):
    """A worker's host in miniature: one pending task that delivers the awaited object."""

    kind = "worker"
    shows_progress = False

    def __init__(self, table: ObjectTable) -> None:
        self.table = table
        self.pending = [b"r"]
        self.blocked: list[bool] = []

    def lends_while_waiting(self, timed: bool) -> bool:
        return not timed

    def set_blocked(self, blocked: bool, waiting_on: list[bytes]) -> None:
        self.blocked.append(blocked)

    def has_pending(self) -> bool:
        return bool(self.pending)

    def run_pending(self) -> None:
        oid = self.pending.pop()
        self.table.arrived(common_pb2.ObjectData(object_id=oid, inline=b"1"))


def test_a_lending_host_blocks_runs_the_awaited_task_nested_then_unblocks() -> None:
    table, _ = _table()
    table.incref(b"r", announce=False)
    host = _LendingHost(table)
    checked: Host = host  # the fake satisfies the protocol
    assert table.wait([b"r"], 1, None, _ok, checked) == [b"r"]
    assert host.blocked == [True, False] and host.pending == []


def test_a_timed_wait_does_not_lend() -> None:
    table, _ = _table()
    host = _LendingHost(table)
    assert table.wait([b"r"], 1, 0.05, _ok, host) == []
    assert host.blocked == [] and host.pending == [b"r"]


def test_the_driver_host_runs_nothing_and_has_no_gpus() -> None:
    host = DriverHost()
    assert host.kind == "driver" and host.worker_id == b"" and host.shows_progress
    assert not host.lends_while_waiting(timed=False) and not host.has_pending()
    assert host.gpu_ids() == []


def test_a_task_cancelled_before_it_started_fails_at_once_and_early_cancels_are_bounded() -> None:
    cancels = Cancels(early_max=2)
    for tid in (b"1", b"2", b"3"):
        cancels.request(tid)
    assert cancels.started(b"1", on_main=False)  # forgotten: only the 2 newest are kept
    cancels.finished(b"1", on_main=False)
    assert not cancels.started(b"3", on_main=False)
    cancels.finished(b"3", on_main=False)
    assert cancels.started(b"3", on_main=False)  # the mark is used once


def test_a_cancel_below_a_nested_task_waits_for_it() -> None:
    cancels = Cancels(early_max=8)
    assert cancels.started(b"outer", on_main=True)
    assert cancels.started(b"inner", on_main=True)
    cancels.request(b"outer")  # deferred: "inner" is on top, no signal is sent
    assert cancels.was_requested(b"outer") and not cancels.was_requested(b"inner")
    cancels.finished(b"inner", on_main=True)
    assert cancels.below_was_cancelled()


def test_runtime_api_imports_nothing_from_runtime_worker() -> None:
    offending = []
    for path in sorted((ROOT / "runtime" / "api").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offending += [f"{path.name}: {n}" for n in names if n.startswith("runtime.worker")]
    assert not offending
