"""ray.util.ActorPool (docs.ray.io, "ray.util.ActorPool" API page): map in order,
map_unordered, submit with get_next / get_next_unordered, has_next, pop_idle and push."""

import runtime as ray
from runtime.util import ActorPool


@ray.remote
class Doubler:
    def double(self, v):
        return 2 * v


# No ray.init(): creating the first actor starts a local cluster, as in the Ray docs.
first, second = Doubler.remote(), Doubler.remote()
pool = ActorPool([first, second])

# map keeps the order of the inputs.
assert list(pool.map(lambda actor, v: actor.double.remote(v), [1, 2, 3, 4])) == [2, 4, 6, 8]

# map_unordered yields results as they finish: the same results, in any order.
assert sorted(pool.map_unordered(lambda actor, v: actor.double.remote(v), [5, 6, 7])) == [10, 12, 14]

# submit queues work when every actor is busy; get_next returns results in submission order.
for v in (10, 20, 30):
    pool.submit(lambda actor, v: actor.double.remote(v), v)
assert pool.has_next()
assert [pool.get_next(), pool.get_next(), pool.get_next()] == [20, 40, 60]
assert not pool.has_next()

pool.submit(lambda actor, v: actor.double.remote(v), 1)
pool.submit(lambda actor, v: actor.double.remote(v), 2)
assert {pool.get_next_unordered(), pool.get_next_unordered()} == {2, 4}

# Actors can be taken out of the pool and put back.
taken = pool.pop_idle()
assert taken is not None and pool.has_free()
pool.push(taken)
third = Doubler.remote()
pool.push(third)
assert list(pool.map(lambda actor, v: actor.double.remote(v), range(6))) == [0, 2, 4, 6, 8, 10]

print("actor pool ok")
ray.shutdown()
