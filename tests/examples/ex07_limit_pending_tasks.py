"""Pattern: using ray.wait to limit the number of pending tasks (docs.ray.io, "Design
patterns"). The driver never lets more than MAX_IN_FLIGHT calls wait on the actor: before
submitting another one it waits for the oldest ones to finish."""

import runtime as ray

ray.init()

MAX_IN_FLIGHT = 4
TOTAL = 30


@ray.remote
class Worker:
    def __init__(self):
        self.done = 0

    def process(self, item):
        self.done += 1
        return item * 2

    def processed(self):
        return self.done


worker = Worker.remote()
in_flight = []
results = []
most_pending = 0
for item in range(TOTAL):
    if len(in_flight) >= MAX_IN_FLIGHT:
        # Block until at least one call finished, then keep only the unfinished ones.
        finished, in_flight = ray.wait(in_flight, num_returns=1)
        results.extend(ray.get(finished))
    in_flight.append(worker.process.remote(item))
    most_pending = max(most_pending, len(in_flight))

results.extend(ray.get(in_flight))
assert most_pending <= MAX_IN_FLIGHT
assert sorted(results) == [2 * i for i in range(TOTAL)]
assert ray.get(worker.processed.remote()) == TOTAL

print("limit pending tasks ok")
ray.shutdown()
