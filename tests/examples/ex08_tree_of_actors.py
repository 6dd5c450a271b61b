"""Pattern: using a supervisor actor to manage a tree of actors (docs.ray.io, "Design
patterns"). The supervisor creates the workers and hands out work; the driver only talks
to the supervisor, and killing it takes its workers down with it (it owns them)."""

import runtime as ray

ray.init()


@ray.remote(num_cpus=0)
class Trainer:
    def __init__(self, learning_rate):
        self.learning_rate = learning_rate

    def fit(self, steps):
        return round(self.learning_rate * steps, 6)


@ray.remote(num_cpus=0)
class Supervisor:
    def __init__(self, learning_rates):
        # Actors created by an actor belong to it: they die when it dies.
        self.trainers = [Trainer.remote(lr) for lr in learning_rates]

    def fit(self, steps):
        return ray.get([t.fit.remote(steps) for t in self.trainers])


supervisor = Supervisor.remote([0.1, 0.01, 0.001])
assert ray.get(supervisor.fit.remote(100)) == [10.0, 1.0, 0.1]
assert ray.get(supervisor.fit.remote(1000)) == [100.0, 10.0, 1.0]

# Killing the supervisor ends the tree: it answers no more (and its trainers go with it).
ray.kill(supervisor)
try:
    ray.get(supervisor.fit.remote(1))
except ray.exceptions.RayActorError:
    pass
else:
    raise AssertionError("a killed supervisor should not answer")

print("tree of actors ok")
ray.shutdown()
