"""ray.util.queue.Queue (docs.ray.io, "ray.util.queue.Queue" API page and the
producer/consumer example): one queue shared by the driver, tasks and actors."""

import runtime as ray
from runtime.util.queue import Empty, Full, Queue

ray.init()

queue = Queue(maxsize=100)


@ray.remote
def consumer(worker_id, queue, count):
    taken = []
    for _ in range(count):
        taken.append(queue.get(block=True))
    return worker_id, taken


# Consumers start first and block on the empty queue; the driver then produces.
consumers = [consumer.remote(i, queue, 5) for i in range(2)]
for item in range(10):
    queue.put(item)

results = dict(ray.get(consumers))
assert sorted(results[0] + results[1]) == list(range(10))
for taken in results.values():
    assert taken == sorted(taken), "each consumer sees the items in queue order"
assert queue.empty() and queue.qsize() == 0


# A producing actor and batch operations.
@ray.remote
class Producer:
    def produce(self, queue, items):
        queue.put_nowait_batch(items)
        return len(items)


producer = Producer.remote()
assert ray.get(producer.produce.remote(queue, ["a", "b", "c"])) == 3
assert queue.size() == 3
assert queue.get_nowait_batch(3) == ["a", "b", "c"]

# Non-blocking calls, and timeouts, raise Empty and Full like the standard library's queue.
try:
    queue.get_nowait()
except Empty:
    pass
else:
    raise AssertionError("an empty queue should raise Empty")

small = Queue(maxsize=1)
small.put("only")
assert small.full()
try:
    small.put("one more", timeout=0.2)
except Full:
    pass
else:
    raise AssertionError("a full queue should raise Full")
assert small.get(timeout=5) == "only"

small.shutdown()
queue.shutdown()
print("queue ok")
ray.shutdown()
