"""Pattern: using nested tasks to achieve nested parallelism (docs.ray.io, "Design
patterns"): a quicksort whose tasks sort their halves in further tasks, and a recursive
Fibonacci whose tasks call the task itself."""

import random

import runtime as ray

ray.init()


def partition(values):
    pivot = values[0]
    lesser = [v for v in values[1:] if v < pivot]
    greater = [v for v in values[1:] if v >= pivot]
    return lesser, pivot, greater


@ray.remote
def quick_sort(values, cutoff=50):
    if len(values) <= cutoff:
        return sorted(values)
    lesser, pivot, greater = partition(values)
    # Both halves run as tasks of their own; this task waits for them (and lends its CPU).
    left = quick_sort.remote(lesser, cutoff)
    right = quick_sort.remote(greater, cutoff)
    return [*ray.get(left), pivot, *ray.get(right)]


rng = random.Random(7)
values = [rng.randint(0, 10_000) for _ in range(600)]
assert ray.get(quick_sort.remote(values)) == sorted(values)


@ray.remote
def fib(n):
    if n < 2:
        return n
    return sum(ray.get([fib.remote(n - 1), fib.remote(n - 2)]))


assert ray.get(fib.remote(8)) == 21

print("nested tasks ok")
ray.shutdown()
