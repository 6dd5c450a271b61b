"""``Peers``, the node's calls to other nodes and to the global schedulers, against fake
stubs: a report home is never given up while the home lives, ``Schedule`` calls carry a
deadline, and a burst of spills or reports is sent a bounded number at a time. Issue 11's
stall was a burst of thousands of reports overflowing the home's gRPC backlog (calls
CANCELLED) and each report given up after five tries. No sockets; backoffs of microseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc
import pytest

from runtime.config import Settings
from runtime.node import peers as peers_module
from runtime.node.actions import ReportHome, Spill, SpillReason
from runtime.node.peers import Peers
from runtime.protocol import common_pb2, gcs_pb2, node_pb2, scheduler_pb2

HOME, PEER = b"H" * 16, b"P" * 16
SETTINGS = Settings(report_retries=2, report_backoff_s=1e-5, max_reports_in_flight=8,
                    max_spills_in_flight=16)
MAX_REPORTS_IN_FLIGHT = SETTINGS.max_reports_in_flight
MAX_SPILLS_IN_FLIGHT = SETTINGS.max_spills_in_flight


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "Too many pending requests")


class FakeRpc:
    """Both stubs at once: ``ReportResults`` fails ``fail`` times, then takes the report;
    ``Schedule`` waits for ``go`` and places every task on PEER. Counts calls in flight."""

    def __init__(self, fail: int = 0, code: grpc.StatusCode = grpc.StatusCode.CANCELLED) -> None:
        self.fail, self.code = fail, code
        self.reports: list[bytes] = []
        self.attempts = self.batches = 0
        self.in_flight = self.most_in_flight = 0
        self.timeouts: list[float | None] = []
        self.go = asyncio.Event()

    async def _enter(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0)

    async def ReportResults(self, req: node_pb2.ReportResultsRequest, metadata: Any,
                            timeout: float | None = None) -> node_pb2.ReportResultsReply:
        await self._enter()
        try:
            self.attempts += 1
            if self.attempts <= self.fail:
                raise _error(self.code)
            self.reports.append(req.task_id)
            return node_pb2.ReportResultsReply()
        finally:
            self.in_flight -= 1

    async def ReportResultsBatch(self, req: node_pb2.ReportResultsBatchRequest, metadata: Any,
                                 timeout: float | None = None) -> node_pb2.ReportResultsReply:
        await self._enter()
        try:
            self.attempts += 1
            self.batches += 1
            if self.attempts <= self.fail:
                raise _error(self.code)
            self.reports.extend(r.task_id for r in req.reports)
            return node_pb2.ReportResultsReply()
        finally:
            self.in_flight -= 1

    async def Schedule(self, req: scheduler_pb2.ScheduleRequest, metadata: Any,
                       timeout: float | None = None) -> scheduler_pb2.ScheduleReply:
        self.timeouts.append(timeout)
        await self._enter()
        try:
            await self.go.wait()
            return scheduler_pb2.ScheduleReply(node_id=PEER, scheduler="gs-0")
        finally:
            self.in_flight -= 1


class FakeChannels:
    def get(self, address: str) -> Any:
        return address

    async def close(self) -> None:
        pass


def _run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10.0))


def _peers(rpc: FakeRpc, monkeypatch: pytest.MonkeyPatch,
           applied: list[Callable[[Any], None]]) -> Peers:
    monkeypatch.setattr(peers_module, "_node_rpc", lambda channel: rpc)
    monkeypatch.setattr(peers_module, "_scheduler_rpc", lambda channel: rpc)
    return Peers(node_id=PEER, address="peer:1", metadata=(), settings=SETTINGS, gcs=None,  # type: ignore[arg-type]
                 path_for=lambda oid: "/nowhere", apply=applied.append,
                 channels=FakeChannels())  # type: ignore[arg-type]


def _report(i: int) -> ReportHome:
    return ReportHome("home:1", node_pb2.ReportResultsRequest(task_id=bytes([i % 256, i // 256]) * 8))


def _drain(peers: Peers) -> Awaitable[Any]:
    return peers.drained()


def test_a_report_home_is_tried_again_past_report_retries_until_the_home_takes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rpc = FakeRpc(fail=8)  # four times report_retries

    async def main() -> None:
        peers = _peers(rpc, monkeypatch, [])
        peers.report_home(_report(1))
        await _drain(peers)

    _run(main())
    assert rpc.attempts == 9 and rpc.reports == [_report(1).request.task_id]


def test_a_report_to_a_home_declared_dead_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    rpc = FakeRpc(fail=10**9)
    applied: list[Callable[[Any], None]] = []

    async def main() -> None:
        peers = _peers(rpc, monkeypatch, applied)
        peers.node_row(gcs_pb2.NodeRow(node_id=HOME, address="home:1", alive=True))
        peers.report_home(_report(1))
        while rpc.attempts < 3:
            await asyncio.sleep(0)
        peers.node_row(gcs_pb2.NodeRow(node_id=HOME, address="home:1", alive=False))
        await _drain(peers)
        assert "home:1" in peers.dead_addresses
        peers.node_row(gcs_pb2.NodeRow(node_id=HOME, address="home:1", alive=True))  # it came back
        assert "home:1" not in peers.dead_addresses

    _run(main())
    assert rpc.reports == [] and len(applied) == 3  # alive, died, alive again


def test_a_report_the_home_refuses_for_good_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    rpc = FakeRpc(fail=10**9, code=grpc.StatusCode.UNAUTHENTICATED)

    async def main() -> None:
        peers = _peers(rpc, monkeypatch, [])
        peers.report_home(_report(1))
        await _drain(peers)

    _run(main())
    assert rpc.attempts == 1 and rpc.reports == []


def test_a_burst_of_reports_home_goes_in_batches_a_bounded_number_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    rpc = FakeRpc()

    async def main() -> None:
        peers = _peers(rpc, monkeypatch, [])
        for i in range(5 * MAX_REPORTS_IN_FLIGHT):
            peers.report_home(_report(i))
        await _drain(peers)

    _run(main())
    assert len(set(rpc.reports)) == len(rpc.reports) == 5 * MAX_REPORTS_IN_FLIGHT
    assert rpc.most_in_flight <= MAX_REPORTS_IN_FLIGHT and rpc.batches < 5 * MAX_REPORTS_IN_FLIGHT


def test_spills_for_a_full_queue_are_bounded_and_every_schedule_call_has_a_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rpc = FakeRpc()
    applied: list[Callable[[Any], None]] = []

    async def main() -> None:
        peers = _peers(rpc, monkeypatch, applied)
        peers.schedulers = ["gs:1"]
        for i in range(3 * MAX_SPILLS_IN_FLIGHT):
            req = scheduler_pb2.ScheduleRequest(spec=common_pb2.TaskSpec(task_id=bytes([i]) * 16))
            peers.spill(Spill(req.spec.task_id, req, SpillReason.QUEUE_FULL))
        never = scheduler_pb2.ScheduleRequest(spec=common_pb2.TaskSpec(task_id=b"n" * 16))
        peers.spill(Spill(never.spec.task_id, never, SpillReason.NEVER_FITS))
        for _ in range(10):
            await asyncio.sleep(0)
        # Those that never fit here are not held back by the limit (a replica may keep them long).
        assert rpc.in_flight == MAX_SPILLS_IN_FLIGHT + 1
        rpc.go.set()
        await _drain(peers)

    _run(main())
    assert len(applied) == 3 * MAX_SPILLS_IN_FLIGHT + 1  # each placement fed to the state
    assert rpc.timeouts and all(t == SETTINGS.rpc_timeout_s for t in rpc.timeouts)


def test_this_nodes_own_row_dead_fences_it_other_rows_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 (fencing): a node woken from a pause reads its own row dead in the nodes table."""
    applied: list[Callable[[Any], None]] = []
    fenced: list[str] = []
    monkeypatch.setattr(peers_module, "_node_rpc", lambda channel: FakeRpc())
    peers = Peers(node_id=PEER, address="peer:1", metadata=(), settings=SETTINGS, gcs=None,  # type: ignore[arg-type]
                  path_for=lambda oid: "/nowhere", apply=applied.append,
                  channels=FakeChannels(), declared_dead=fenced.append)  # type: ignore[arg-type]
    peers.node_row(gcs_pb2.NodeRow(node_id=PEER, address="peer:1", alive=True))
    peers.node_row(gcs_pb2.NodeRow(node_id=HOME, address="home:1", alive=True))
    peers.node_row(gcs_pb2.NodeRow(node_id=HOME, address="home:1", alive=False))
    assert fenced == [] and len(applied) == 2  # its own row alive is not a peer; another's death is
    peers.node_row(gcs_pb2.NodeRow(node_id=PEER, address="peer:1", alive=False,
                                   death_cause="no heartbeat for 9.0 s (timeout 5 s)"))
    assert fenced == [("node 505050505050 (peer:1) was declared dead (no heartbeat for 9.0 s "
                       "(timeout 5 s)): it must rejoin under a new id")]
    assert len(applied) == 2 and PEER not in peers.addresses
