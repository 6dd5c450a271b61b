"""Ray Core walkthrough (docs.ray.io, "Getting started / Ray Core walkthrough"): a remote
function, a stateful actor, and a large object put once and shared by many tasks."""

import numpy as np

import runtime as ray

ray.init()


# A plain function becomes a task with one decorator; .remote() returns a future at once.
@ray.remote
def cube(x):
    return x ** 3


futures = [cube.remote(i) for i in range(6)]
assert ray.get(futures) == [0, 1, 8, 27, 64, 125]


# A class becomes an actor: a worker process that keeps its state between calls.
@ray.remote
class Tally:
    def __init__(self):
        self.total = 0

    def add(self, amount):
        self.total += amount
        return self.total

    def read(self):
        return self.total


tally = Tally.remote()
for amount in (5, 10, 20):
    tally.add.remote(amount)
assert ray.get(tally.read.remote()) == 35


# A big array is stored once in the object store; every task gets it by reference.
@ray.remote
def column_sum(matrix, column):
    return float(matrix[:, column].sum())


matrix_ref = ray.put(np.arange(12, dtype=np.float64).reshape(4, 3))
sums = ray.get([column_sum.remote(matrix_ref, c) for c in range(3)])
assert sums == [18.0, 22.0, 26.0]

print("walkthrough ok")
ray.shutdown()
