"""Named actors (docs.ray.io, "Actors / Named actors" and "Using namespaces"): an actor
found again by name, get_if_exists, names scoped by namespace."""

import runtime as ray

ray.init(namespace="colors")


@ray.remote
class Palette:
    def __init__(self):
        self.colors = []

    def add(self, color):
        self.colors.append(color)
        return len(self.colors)

    def colors_so_far(self):
        return list(self.colors)


palette = Palette.options(name="palette").remote()
ray.get(palette.add.remote("red"))

# Any code of the job (here: a task) finds the actor by its name.
@ray.remote
def add_from_a_task(color):
    found = ray.get_actor("palette")
    return ray.get(found.add.remote(color))


assert ray.get(add_from_a_task.remote("green")) == 2
assert ray.get(ray.get_actor("palette").colors_so_far.remote()) == ["red", "green"]

# get_if_exists returns the existing actor rather than failing on the taken name.
same = Palette.options(name="palette", get_if_exists=True).remote()
assert ray.get(same.add.remote("blue")) == 3

# A name is taken only in its namespace.
elsewhere = Palette.options(name="palette", namespace="shapes").remote()
assert ray.get(elsewhere.colors_so_far.remote()) == []
assert ray.get(ray.get_actor("palette", namespace="shapes").add.remote("x")) == 1

try:
    ray.get_actor("no-such-actor")
except ValueError:
    pass
else:
    raise AssertionError("an unknown name should raise ValueError")

ray.kill(palette)
ray.kill(elsewhere)
print("named actors ok")
ray.shutdown()
