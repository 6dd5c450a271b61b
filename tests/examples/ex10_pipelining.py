"""Pattern: using pipelining to increase throughput (docs.ray.io, "Design patterns"). A
worker actor asks a queue actor for its next item while it still processes the current one,
so it never sits idle waiting for the queue."""

import runtime as ray

ray.init()


@ray.remote
class WorkQueue:
    def __init__(self, items):
        self.items = list(items)

    def next_item(self):
        return self.items.pop(0) if self.items else None


@ray.remote
class PipelinedWorker:
    def __init__(self, work_queue):
        self.work_queue = work_queue
        self.outputs = []

    def process(self, item):
        self.outputs.append(item * item)

    def run(self):
        upcoming = self.work_queue.next_item.remote()
        while True:
            item = ray.get(upcoming)
            if item is None:
                break
            # Ask for the next item first, then work on this one while it is fetched.
            upcoming = self.work_queue.next_item.remote()
            self.process(item)
        return self.outputs


queue = WorkQueue.remote(range(10))
worker = PipelinedWorker.remote(queue)
assert ray.get(worker.run.remote()) == [i * i for i in range(10)]

print("pipelining ok")
ray.shutdown()
