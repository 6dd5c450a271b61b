"""The GCS ``PlacementGroups`` service over real gRPC on 127.0.0.1, with recording fake
nodes: two-phase reservation, waiting groups, node death, removal, jobs ending.

Nodes are rows registered with the GCS (their heartbeats carry the resources the planner
reads); the bundle calls go to ``FakeNodes``, which answers and records them. Tests wait on
the GCS's replies and rows, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

import pytest

from runtime.exceptions import InvalidRequestError, NodeDiedError, NotFoundError
from runtime.gcs.client import GcsClient
from runtime.gcs.service import GcsService
from runtime.gcs.state import GcsState
from runtime.protocol import common_pb2, gcs_pb2
from runtime.rpc.server import create_server
from runtime.testing import async_wait_for

pytestmark = pytest.mark.timeout(60)

TOKEN = "b" * 64
_T = TypeVar("_T")


def run(coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class FakeNodes:
    """``BundleNodes`` that answer at once: every call recorded, prepares refused on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[int]]] = []
        #: address -> why its next prepares fail
        self.refuse: dict[str, str] = {}
        self.closed = False

    async def _call(self, verb: str, address: str, bundles: Sequence[common_pb2.Bundle]) -> str:
        self.calls.append((verb, address, [b.index for b in bundles]))
        return self.refuse.get(address, "") if verb == "prepare" else ""

    async def prepare(self, address: str, bundles: Sequence[common_pb2.Bundle]) -> str:
        return await self._call("prepare", address, bundles)

    async def commit(self, address: str, bundles: Sequence[common_pb2.Bundle]) -> str:
        return await self._call("commit", address, bundles)

    async def release(self, address: str, bundles: Sequence[common_pb2.Bundle]) -> str:
        return await self._call("release", address, bundles)

    async def close(self) -> None:
        self.closed = True

    def verbs(self, verb: str) -> list[tuple[str, list[int]]]:
        return [(a, idx) for v, a, idx in self.calls if v == verb]


def node_id(i: int) -> bytes:
    return i.to_bytes(16, "big")


def address(i: int) -> str:
    return f"127.0.0.1:{7000 + i}"


async def add_node(gcs: GcsClient, i: int, cpus: float, **extra: float) -> None:
    load = common_pb2.NodeLoad(total={"CPU": cpus, **extra}, available={"CPU": cpus, **extra})
    await gcs.register_node(gcs_pb2.NodeRow(node_id=node_id(i), address=address(i), load=load))


def group(strategy: str, *cpus: float, name: str = "", job: bytes = b"",
          detached: bool = False) -> gcs_pb2.PlacementGroupRow:
    pg_id = (time.monotonic_ns() % 2**64).to_bytes(8, "big") * 2
    row = gcs_pb2.PlacementGroupRow(placement_group_id=pg_id, strategy=strategy, name=name,
                                    namespace="default", job_id=job, detached=detached)
    for c in cpus:
        row.bundles.append(common_pb2.Bundle(resources={"CPU": c}))
    return row


@contextlib.asynccontextmanager
async def started() -> AsyncIterator[tuple[GcsClient, FakeNodes, GcsService]]:
    nodes = FakeNodes()
    service = GcsService(GcsState(num_shards=2), session_dir="/tmp/cellray-test", heartbeat_ms=50,
                         bundle_nodes=nodes)
    server, port = await create_server("127.0.0.1", 0, TOKEN, service.adders())
    service.start()
    client = GcsClient(f"127.0.0.1:{port}", TOKEN)
    try:
        yield client, nodes, service
    finally:
        await client.close()
        await service.close()
        await server.stop(None)
    assert nodes.closed


def placed_on(row: gcs_pb2.PlacementGroupRow) -> list[bytes]:
    return [b.node_id for b in sorted(row.bundles, key=lambda b: b.index)]


def test_a_group_is_prepared_then_committed_everywhere_then_created() -> None:
    async def body() -> None:
        async with started() as (gcs, nodes, _):
            for i in (1, 2, 3):
                await add_node(gcs, i, 2)
            pg_id = await gcs.create_placement_group(group("STRICT_SPREAD", 1, 1, 1))
            ready, row = await gcs.wait_placement_group(pg_id, 10)
            assert ready and row.state == "CREATED" and row.why == "" and row.attempts == 1
            assert sorted(placed_on(row)) == [node_id(1), node_id(2), node_id(3)]
            assert row.ready_time >= row.create_time > 0
            prepares, commits = nodes.verbs("prepare"), nodes.verbs("commit")
            everywhere = [address(i) for i in (1, 2, 3)]
            assert sorted(a for a, _ in prepares) == sorted(a for a, _ in commits) == everywhere
            last_prepare = max(i for i, c in enumerate(nodes.calls) if c[0] == "prepare")
            first_commit = min(i for i, c in enumerate(nodes.calls) if c[0] == "commit")
            assert last_prepare < first_commit  # phase two starts once phase one is done
            assert await gcs.get_placement_group(pg_id) == row
    run(body())


def test_a_refused_prepare_releases_the_others_and_is_tried_again() -> None:
    async def body() -> None:
        async with started() as (gcs, nodes, _):
            await add_node(gcs, 1, 1)
            await add_node(gcs, 2, 1)
            nodes.refuse[address(2)] = "busy right now"
            pg_id = await gcs.create_placement_group(group("STRICT_SPREAD", 1, 1))
            ready, row = await gcs.wait_placement_group(pg_id, 0.2)
            assert not ready and row.state == "PENDING" and "busy right now" in row.why
            assert (address(1), [0]) in nodes.verbs("release") or (address(1), [1]) in nodes.verbs("release")
            assert not nodes.verbs("commit")
            del nodes.refuse[address(2)]
            await gcs.heartbeat(node_id(2), common_pb2.NodeLoad(total={"CPU": 1}, available={"CPU": 1}))
            ready, row = await gcs.wait_placement_group(pg_id, 10)
            assert ready and row.attempts >= 2
    run(body())


def test_an_infeasible_group_waits_with_a_reason_and_blocks_no_other() -> None:
    async def body() -> None:
        async with started() as (gcs, _nodes, _):
            await add_node(gcs, 1, 2)
            big = await gcs.create_placement_group(group("STRICT_PACK", 2, 2))
            small = await gcs.create_placement_group(group("PACK", 1))
            ready, row = await gcs.wait_placement_group(small, 10)
            assert ready and placed_on(row) == [node_id(1)]
            ready, row = await gcs.wait_placement_group(big, 0.2)
            assert not ready and row.state == "PENDING" and row.infeasible
            assert "STRICT_PACK needs one node with {CPU: 4}" in row.why
            await add_node(gcs, 2, 8)  # a node that fits joins
            ready, row = await gcs.wait_placement_group(big, 10)
            assert ready and placed_on(row) == [node_id(2), node_id(2)] and not row.infeasible
    run(body())


def test_bundles_of_a_dead_node_are_placed_again_and_the_others_stay() -> None:
    async def body() -> None:
        async with started() as (gcs, nodes, _):
            for i in (1, 2, 3):
                await add_node(gcs, i, 1)
            pg_id = await gcs.create_placement_group(group("STRICT_SPREAD", 1, 1))
            ready, row = await gcs.wait_placement_group(pg_id, 10)
            assert ready
            before = placed_on(row)
            dead = before[0]
            nodes.calls.clear()
            await gcs.unregister_node(dead, "killed")

            async def moved() -> gcs_pb2.PlacementGroupRow | None:
                row = await gcs.get_placement_group(pg_id)
                done = row is not None and row.state == "CREATED" and dead not in placed_on(row)
                return row if done else None
            row = await async_wait_for(moved, timeout=10, what="the lost bundle placed again")
            after = placed_on(row)
            assert after[1] == before[1] and after[0] not in (before[0], before[1])
            assert [idx for _, idx in nodes.verbs("commit")] == [[0]]  # only the lost bundle
            assert "died" not in row.why
            # The node the GCS gave up on cannot come back under its id (it is fenced: it drops
            # its bundles and rejoins under a new id), so nothing is released there.
            with pytest.raises(NodeDiedError, match="must rejoin under a new id"):
                await add_node(gcs, int.from_bytes(dead, "big"), 1)
            assert nodes.verbs("release") == []
    run(body())


def test_removal_releases_everywhere_and_wait_says_not_ready() -> None:
    async def body() -> None:
        async with started() as (gcs, nodes, _):
            await add_node(gcs, 1, 4)
            pg_id = await gcs.create_placement_group(group("PACK", 1, 1))
            assert (await gcs.wait_placement_group(pg_id, 10))[0]
            assert await gcs.remove_placement_group(pg_id)
            assert nodes.verbs("release") == [(address(1), [0, 1])]
            ready, row = await gcs.wait_placement_group(pg_id, 5)
            assert not ready and row.state == "REMOVED" and placed_on(row) == [b"", b""]
            assert await gcs.remove_placement_group(pg_id)  # twice is fine
            assert not await gcs.remove_placement_group(b"x" * 16)
            with pytest.raises(NotFoundError):
                await gcs.wait_placement_group(b"x" * 16, 0)
    run(body())


def test_a_finished_jobs_groups_go_except_detached_ones() -> None:
    async def body() -> None:
        async with started() as (gcs, nodes, _):
            await add_node(gcs, 1, 4)
            job = await gcs.register_job(gcs_pb2.JobRow(driver_pid=1))
            mine = await gcs.create_placement_group(group("PACK", 1, job=job))
            kept = await gcs.create_placement_group(group("PACK", 1, job=job, detached=True))
            assert (await gcs.wait_placement_group(mine, 10))[0]
            assert (await gcs.wait_placement_group(kept, 10))[0]
            await gcs.finish_job(job)

            async def state_of(pg: bytes) -> str:
                row = await gcs.get_placement_group(pg)
                return row.state if row is not None else ""

            async def removed() -> bool:
                return await state_of(mine) == "REMOVED"
            await async_wait_for(removed, timeout=10, what="the finished job's group REMOVED")
            assert await state_of(kept) == "CREATED"
            assert nodes.verbs("release") == [(address(1), [0])]
    run(body())


def test_bad_groups_and_names() -> None:
    async def body() -> None:
        async with started() as (gcs, _, _):
            with pytest.raises(InvalidRequestError, match="unknown strategy 'TIGHT'"):
                await gcs.create_placement_group(group("TIGHT", 1))
            with pytest.raises(InvalidRequestError, match="at least one bundle"):
                await gcs.create_placement_group(group("PACK"))
            pg_id = await gcs.create_placement_group(group("PACK", 1, name="train"))
            with pytest.raises(InvalidRequestError, match="named 'train' exists already"):
                await gcs.create_placement_group(group("PACK", 1, name="train"))
            found = await gcs.get_placement_group(name="train", namespace="default")
            assert found is not None and found.placement_group_id == pg_id
            assert await gcs.get_placement_group(name="nope", namespace="default") is None
            ready, row = await gcs.wait_placement_group(pg_id, 0.1)  # no node at all
            assert not ready and row.infeasible and "no node is alive" in row.why
            with pytest.raises(InvalidRequestError, match="timeout_s must be >= 0"):
                await gcs.wait_placement_group(pg_id, -1)
    run(body())
