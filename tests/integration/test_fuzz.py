"""10,000 malformed requests with a valid token, to every method of every server of a real
cluster (issue 17, point 4): every call is answered with a status that says what was wrong,
no server dies, and every table still reads cleanly afterwards.

The requests (``runtime.testing.fuzz``): messages of the right type with fields no honest
client sends (ids of the wrong length, negative or huge numbers, NaN, odd strings), the
same cut short, random bytes, and 5 MiB messages. Seeded: a failure replays. The two
``Shutdown`` methods are left out: a valid token may stop a server, by design.
"""

from __future__ import annotations

import asyncio
import collections
import pathlib
import random
from typing import Any

import grpc
import pytest

import runtime as rt
from runtime import _session, state
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.rpc.channel import channel_options, token_metadata
from runtime.testing import fuzz

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOTAL = 10_000
SEED = 17
#: What a malformed request may get: a refusal that names the problem, "no such thing",
#: "too large", or success (a well-formed request of odd but legal values).
ANSWERS = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
           "ALREADY_EXISTS", "OUT_OF_RANGE"}
#: A task that no node can ever fit waits in the scheduler for one to join: by design, the
#: call stays open (its deadline ends it here).
WAITS = {"Schedule"}


async def _call(channel: grpc.aio.Channel, path: str, method: Any, data: bytes,
                md: tuple[tuple[str, str], ...]) -> str:
    try:
        if method.client_streaming and method.server_streaming:
            async def one() -> Any:
                yield data
            call = channel.stream_stream(path)(one(), metadata=md, timeout=30)
            async for _ in call:
                break
            call.cancel()
        elif method.server_streaming:
            call = channel.unary_stream(path)(data, metadata=md, timeout=30)
            async for _ in call:
                break
            call.cancel()
        else:
            await channel.unary_unary(path)(data, metadata=md, timeout=30)
        return "OK"
    except grpc.aio.AioRpcError as err:
        return err.code().name


def test_ten_thousand_malformed_requests_are_all_answered_and_break_nothing(tmp_path: pathlib.Path) -> None:
    cluster = LocalCluster([NodeSpec(num_cpus=1)], session_root=tmp_path / "s").start()
    try:
        assert cluster.token_file is not None
        md = token_metadata(_session.read_token(cluster.token_file))
        where = {"cellray.NodeManager": str(cluster.node_info[0]["address"]),
                 "cellray.GlobalScheduler": str(cluster.scheduler_info[0]["address"])}
        targets = [(p, m) for p, m in fuzz.methods() if m.name != "Shutdown"]
        per_method = TOTAL // len(targets) + 1
        bad: dict[tuple[str, str], tuple[int, str]] = {}
        answered: collections.Counter[str] = collections.Counter()

        async def run() -> None:
            channels: dict[str, grpc.aio.Channel] = {}
            gate = asyncio.Semaphore(8)
            rng = random.Random(SEED)

            async def one(path: str, method: Any, req: fuzz.Fuzzed) -> None:
                address = where.get(method.containing_service.full_name, cluster.address)
                channel = channels.get(address)
                if channel is None:
                    channel = grpc.aio.insecure_channel(address, options=channel_options())
                    channels[address] = channel
                async with gate:
                    code = await _call(channel, path, method, req.data, md)
                answered[code] += 1
                if code not in ANSWERS and not (code == "DEADLINE_EXCEEDED" and method.name in WAITS):
                    n, how = bad.get((path, code), (0, req.how))
                    bad[(path, code)] = (n + 1, how)

            try:
                await asyncio.gather(*(one(path, method, req) for path, method in targets
                                       for req in fuzz.requests(method, rng, per_method)))
            finally:
                for channel in channels.values():
                    await channel.close()

        asyncio.run(run())
        assert sum(answered.values()) >= TOTAL
        assert not bad, "answers that say nothing useful (method, status: count, an example): " + "; ".join(
            f"{p} {c}: {n}, e.g. {how[:200]}" for (p, c), (n, how) in sorted(bad.items()))

        # Every server is up, and every table reads cleanly for an ordinary client.
        assert cluster.head is not None and all(s.alive() for s in cluster.schedulers)
        assert all(n.alive() for n in cluster.nodes)
        rt.init(address=cluster.address, token_file=str(cluster.token_file))
        try:
            nodes = rt.nodes()
            assert [n["Alive"] for n in nodes] == [True] and rt.cluster_resources()["CPU"] == 1.0
            for read in (state.list_actors, state.list_jobs, state.list_nodes,
                         state.list_placement_groups, state.list_tasks, state.list_objects):
                read()
            assert rt.get(rt.remote(lambda: 41 + 1).remote(), timeout=60) == 42

            @rt.remote
            class Counter:
                def incr(self) -> int:
                    return 1

            assert rt.get(Counter.remote().incr.remote(), timeout=60) == 1
        finally:
            rt.shutdown()
        # Refusals are logged rate-limited: the GCS log did not grow with each request.
        gcs_log = cluster.session_dir / "logs" / "gcs.log"
        assert gcs_log.stat().st_size < 256 * 1024, f"{gcs_log} is {gcs_log.stat().st_size} bytes"
    finally:
        cluster.stop()
