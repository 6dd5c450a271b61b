"""Actors (docs.ray.io, "Ray Core / Actors"): a counter actor, calls from one caller run in
order, actor handles passed to tasks, methods with several returns, ray.kill."""

import runtime as ray

ray.init()


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self):
        self.value += 1
        return self.value

    def get_counter(self):
        return self.value

    @ray.method(num_returns=2)
    def value_and_double(self):
        return self.value, 2 * self.value


counter = Counter.remote()
# Calls from one caller run one at a time, in the order they were made.
assert ray.get([counter.increment.remote() for _ in range(5)]) == [1, 2, 3, 4, 5]
assert ray.get(counter.get_counter.remote()) == 5

value_ref, double_ref = counter.value_and_double.remote()
assert ray.get([value_ref, double_ref]) == [5, 10]

# Constructor arguments, and an actor per instance: each keeps its own state.
others = [Counter.remote(start=100 * i) for i in range(3)]
assert ray.get([c.increment.remote() for c in others]) == [1, 101, 201]


# A handle can be passed to tasks; all of them then call the same actor.
@ray.remote
def bump(handle, times):
    for _ in range(times):
        handle.increment.remote()
    return ray.get(handle.get_counter.remote())


ray.get([bump.remote(counter, 10) for _ in range(3)])
assert ray.get(counter.get_counter.remote()) == 35

# ray.kill ends the actor at once; later calls fail with RayActorError.
ray.kill(counter)
try:
    ray.get(counter.increment.remote())
except ray.exceptions.RayActorError:
    pass
else:
    raise AssertionError("a killed actor should not answer")

print("actors ok")
ray.shutdown()
