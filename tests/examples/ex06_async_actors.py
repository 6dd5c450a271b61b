"""AsyncIO and threaded actors (docs.ray.io, "Actors / AsyncIO / Concurrency for Actors"):
an async actor runs its calls concurrently on one event loop, max_concurrency bounds how
many run at once, a threaded actor runs sync methods in a pool, and refs can be awaited."""

import asyncio

import runtime as ray

ray.init()


@ray.remote
class Rendezvous:
    """Each call waits until `expected` calls have arrived: only concurrent calls finish."""

    def __init__(self, expected):
        self.expected = expected
        self.arrived = 0
        self.everyone_here = asyncio.Event()

    async def arrive(self, who):
        self.arrived += 1
        if self.arrived == self.expected:
            self.everyone_here.set()
        await self.everyone_here.wait()
        return who


meeting = Rendezvous.remote(4)
assert sorted(ray.get([meeting.arrive.remote(i) for i in range(4)])) == [0, 1, 2, 3]


@ray.remote
class Gauge:
    """Records the highest number of calls that were inside `work` at the same time."""

    def __init__(self):
        self.inside = 0
        self.most = 0

    async def work(self, step):
        self.inside += 1
        self.most = max(self.most, self.inside)
        for _ in range(20):  # yield to the loop several times while "working"
            await asyncio.sleep(0)
        self.inside -= 1
        return step

    async def peak(self):
        return self.most


limited = Gauge.options(max_concurrency=2).remote()
assert ray.get([limited.work.remote(i) for i in range(8)]) == list(range(8))
assert ray.get(limited.peak.remote()) <= 2


# A threaded actor: sync methods, several at once in a thread pool.
@ray.remote(max_concurrency=3)
class ThreadedMeeting:
    def __init__(self):
        import threading
        self.barrier = threading.Barrier(3, timeout=60)

    def arrive(self, who):
        self.barrier.wait()  # passes only when three calls run in parallel
        return who


threaded = ThreadedMeeting.remote()
assert sorted(ray.get([threaded.arrive.remote(i) for i in range(3)])) == [0, 1, 2]


@ray.remote
def square(x):
    return x * x


# Refs are awaitable from asyncio code, as are actor calls.
async def main():
    values = await asyncio.gather(*[square.remote(i) for i in range(4)])
    assert values == [0, 1, 4, 9]
    assert await limited.peak.remote() <= 2


asyncio.run(main())
print("async actors ok")
ray.shutdown()
