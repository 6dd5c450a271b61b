"""Tasks (docs.ray.io, "Ray Core / Tasks"): remote functions, resource requests through
.options(), refs passed between tasks, ray.wait for the first finished, several returns.
No ray.init(): the first .remote() starts a local cluster, as in Ray."""

import runtime as ray


@ray.remote
def one():
    return 1


@ray.remote
def plus_one(value):
    return value + 1


# .remote() gives back an ObjectRef right away; ray.get blocks for the value.
assert ray.get(one.remote()) == 1

# Resource needs are declared on the decorator or overridden per call with .options().
@ray.remote(num_cpus=1)
def heavy():
    return "ran with one CPU"


assert ray.get(heavy.options(num_cpus=0.5).remote()) == "ran with one CPU"

# A ref handed to another task arrives there as its value, once the first task is done.
first = one.remote()
second = plus_one.remote(first)
assert ray.get(second) == 2

# ray.wait returns as soon as the requested number of refs is ready.
refs = [plus_one.remote(i) for i in range(4)]
ready, not_ready = ray.wait(refs, num_returns=1, timeout=None)
assert len(ready) == 1 and len(not_ready) == 3
assert sorted(ray.get(refs)) == [1, 2, 3, 4]


# num_returns splits a returned tuple into separate refs.
@ray.remote(num_returns=3)
def three_values():
    return "a", "b", "c"


a_ref, b_ref, c_ref = three_values.remote()
assert ray.get([a_ref, b_ref, c_ref]) == ["a", "b", "c"]


# A generator with a fixed num_returns stores each yielded value as it is produced.
@ray.remote(num_returns=3)
def yield_three():
    for i in range(3):
        yield i * 10


assert ray.get(list(yield_three.remote())) == [0, 10, 20]

print("tasks ok")
ray.shutdown()
