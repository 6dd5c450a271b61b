"""The node's GCS reporter with a fake GCS: nothing is lost, nothing is reordered.

A write leaves the reporter only once its call succeeded; a failed or cancelled flush
leaves the unsent writes in front of those made since, and the next flush sends them in
the order the state made them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runtime.exceptions import ConnectionLostError, InvalidRequestError
from runtime.node.actions import ObjectLocation, PutActor, ReleaseActorName, ReportEvent
from runtime.node.reporting import GcsReporter
from runtime.protocol import common_pb2, gcs_pb2

NODE_ID = b"\x07" * 16
ADDRESS = "127.0.0.1:7000"


class FakeGcs:
    """Records the calls that succeeded; ``fail`` maps a call's label to the error it raises
    (once), ``block`` holds the call with that label until ``release`` is set."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail: dict[str, BaseException] = {}
        self.block: str | None = None
        self.blocked = asyncio.Event()
        self.release = asyncio.Event()

    async def _call(self, label: str) -> None:
        if label == self.block:
            self.blocked.set()
            await self.release.wait()
        error = self.fail.pop(label, None)
        if error is not None:
            raise error
        self.sent.append(label)

    async def report_events(self, task_events: list[common_pb2.TaskEvent],
                            object_updates: list[gcs_pb2.ObjectLocationUpdate]) -> None:
        names = [e.name for e in task_events] + [u.object_id.decode() for u in object_updates]
        await self._call("events:" + ",".join(names))

    async def put_actor(self, row: gcs_pb2.ActorRow) -> None:
        assert row.node_address == ADDRESS
        await self._call(f"actor:{row.state}")

    async def release_actor_name(self, namespace: str, name: str) -> None:
        await self._call(f"release:{namespace}/{name}")


def reporter_with(gcs: FakeGcs) -> GcsReporter:
    return GcsReporter(gcs, NODE_ID, ADDRESS)


def put(reporter: GcsReporter, state: str) -> None:
    reporter.put_actor(PutActor(gcs_pb2.ActorRow(actor_id=b"\x01" * 16, state=state)))


def event(reporter: GcsReporter, name: str) -> None:
    reporter.report_event(ReportEvent(common_pb2.TaskEvent(name=name)))


def location(reporter: GcsReporter, oid: str) -> None:
    reporter.object_location(ObjectLocation(oid.encode(), 1, False))


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10.0))


def test_a_failed_actor_write_is_sent_again_by_the_next_flush_in_order() -> None:
    async def main() -> None:
        gcs = FakeGcs()
        reporter = reporter_with(gcs)
        put(reporter, "ALIVE")
        put(reporter, "DEAD")
        reporter.release_actor_name(ReleaseActorName("ns", "counter"))
        event(reporter, "t1")
        gcs.fail["actor:DEAD"] = ConnectionLostError("the GCS is gone")
        with pytest.raises(ConnectionLostError):
            await reporter.flush()
        assert gcs.sent == ["actor:ALIVE"]
        # The failed write and what followed it stay, in front of what is made meanwhile.
        assert reporter.pending() == 3
        event(reporter, "t2")
        await reporter.flush()
        assert gcs.sent == ["actor:ALIVE", "actor:DEAD", "release:ns/counter", "events:t1,t2"]
        assert reporter.pending() == 0
    run(main())


def test_a_failed_batch_goes_back_in_front_of_later_events() -> None:
    async def main() -> None:
        gcs = FakeGcs()
        reporter = reporter_with(gcs)
        event(reporter, "t1")
        location(reporter, "o1")
        gcs.fail["events:t1,o1"] = ConnectionLostError("the GCS is gone")
        with pytest.raises(ConnectionLostError):
            await reporter.flush()
        event(reporter, "t2")
        location(reporter, "o2")
        assert reporter.pending() == 4
        await reporter.flush()
        assert gcs.sent == ["events:t1,t2,o1,o2"]
        assert reporter.pending() == 0
    run(main())


def test_a_cancelled_flush_loses_nothing() -> None:
    async def main() -> None:
        gcs = FakeGcs()
        reporter = reporter_with(gcs)
        put(reporter, "ALIVE")
        reporter.release_actor_name(ReleaseActorName("ns", "counter"))
        event(reporter, "t1")
        gcs.block = "release:ns/counter"
        flushing = asyncio.get_running_loop().create_task(reporter.flush())
        await gcs.blocked.wait()
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        assert gcs.sent == ["actor:ALIVE"]
        assert reporter.pending() == 2
        gcs.block = None
        await reporter.flush()
        assert gcs.sent == ["actor:ALIVE", "release:ns/counter", "events:t1"]

        # Cancelled while the batch is on its way: the batch goes back too.
        event(reporter, "t2")
        gcs.block, gcs.blocked = "events:t2", asyncio.Event()
        flushing = asyncio.get_running_loop().create_task(reporter.flush())
        await gcs.blocked.wait()
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        event(reporter, "t3")
        gcs.block = None
        await reporter.flush()
        assert gcs.sent[-1] == "events:t2,t3"
    run(main())


def test_a_write_the_gcs_refuses_for_good_is_dropped_and_the_rest_goes_on() -> None:
    async def main() -> None:
        gcs = FakeGcs()
        reporter = reporter_with(gcs)
        put(reporter, "ALIVE")
        put(reporter, "DEAD")
        gcs.fail["actor:ALIVE"] = InvalidRequestError("bad row")
        await reporter.flush()
        assert gcs.sent == ["actor:DEAD"]
        assert reporter.pending() == 0
    run(main())


def test_settle_waits_for_the_flush_under_way_within_its_bound() -> None:
    async def main() -> None:
        gcs = FakeGcs()
        reporter = reporter_with(gcs)
        assert await reporter.settle(0.01)  # nothing under way
        put(reporter, "ALIVE")
        gcs.block = "actor:ALIVE"
        flushing = asyncio.get_running_loop().create_task(reporter.flush())
        await gcs.blocked.wait()
        assert not await reporter.settle(0.01)  # still blocked: the bound holds
        settling = asyncio.get_running_loop().create_task(reporter.settle(5.0))
        await asyncio.sleep(0)
        gcs.release.set()
        assert await settling
        assert flushing.done()
        assert gcs.sent == ["actor:ALIVE"]
        assert reporter.pending() == 0
    run(main())


def test_through_a_long_outage_the_oldest_task_events_go_and_nothing_else() -> None:
    async def main() -> None:
        gcs = FakeGcs()
        reporter = GcsReporter(gcs, NODE_ID, ADDRESS, max_events=10)
        put(reporter, "ALIVE")
        location(reporter, "o1")
        for i in range(12):
            event(reporter, f"t{i}")
        # Past the cap, a tenth of it more goes at once (not one event per new one).
        assert reporter.dropped_events == 2 and reporter.pending() == 1 + 1 + 10
        gcs.fail["events:" + ",".join(f"t{i}" for i in range(2, 12)) + ",o1"] = ConnectionLostError("away")
        with pytest.raises(ConnectionLostError):
            await reporter.flush()
        for i in range(12, 14):
            event(reporter, f"t{i}")
        await reporter.flush()  # the GCS is back
        assert gcs.sent == ["actor:ALIVE", "events:" + ",".join(f"t{i}" for i in range(4, 14)) + ",o1"]
        assert reporter.dropped_events == 0  # said once, then counted afresh

    run(main())


def test_the_event_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_events"):
        GcsReporter(FakeGcs(), NODE_ID, ADDRESS, max_events=0)
