"""Ray generators (docs.ray.io, "Ray Core / Ray Generators"): a generator task streams
its items as ObjectRefs while it runs; next() and for loops, async for, an exception in
the middle of the stream, generator methods of actors, and completed()."""

import asyncio

import runtime as ray

ray.init()


# Any generator function decorated with ray.remote is a streaming generator task.
@ray.remote
def countdown(n):
    yield from range(n, 0, -1)


gen = countdown.remote(3)
assert isinstance(gen, ray.ObjectRefGenerator)
first = next(gen)
assert isinstance(first, ray.ObjectRef) and ray.get(first) == 3
assert [ray.get(ref) for ref in gen] == [2, 1]
try:
    next(gen)
except StopIteration:
    pass
else:
    raise AssertionError("the stream should be over")

# num_returns="streaming" spells it out; the result is the same.
@ray.remote(num_returns="streaming")
def letters(word):
    yield from word


assert [ray.get(ref) for ref in letters.remote("ray")] == ["r", "a", "y"]


# An exception raised by the generator comes back at its place in the stream.
@ray.remote
def breaks_after(n):
    yield from range(n)
    raise ValueError(f"stopped after {n} items")


seen = []
errors = []
for ref in breaks_after.remote(2):
    try:
        seen.append(ray.get(ref))
    except ValueError as e:
        errors.append(str(e))
assert seen == [0, 1]
assert len(errors) == 1 and "stopped after 2 items" in errors[0]


# Actor methods that are generators stream too, including async generators.
@ray.remote
class Reader:
    def lines(self, n):
        for i in range(n):
            yield f"line {i}"

    async def chunks(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i


reader = Reader.remote()
assert ray.get(list(reader.lines.remote(2))) == ["line 0", "line 1"]


async def consume():
    out = []
    async for ref in reader.chunks.remote(3):
        out.append(await ref)
    return out


assert asyncio.run(consume()) == [0, 1, 2]

# completed() is a ref that is ready once the generator task has ended.
gen = countdown.remote(4)
ray.get(gen.completed())
assert [ray.get(ref) for ref in gen] == [4, 3, 2, 1]

failing = breaks_after.remote(1)
try:
    ray.get(failing.completed())
except ValueError:
    pass
else:
    raise AssertionError("completed() of a failed generator should raise its error")

print("generators ok")
ray.shutdown()
