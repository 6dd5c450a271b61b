"""Runtime context (docs.ray.io, "ray.runtime_context.RuntimeContext" API page): what a
driver, a task and an actor learn about where they run."""

import runtime as ray

ray.init(num_cpus=2)

context = ray.get_runtime_context()
driver_job = context.get_job_id()
driver_node = context.get_node_id()
# A driver runs no task and is no actor.
assert context.get_task_id() is None and context.get_actor_id() is None
assert driver_node in {n["NodeID"] for n in ray.nodes()}


@ray.remote(num_cpus=1)
def where_am_i():
    ctx = ray.get_runtime_context()
    return {
        "job": ctx.get_job_id(),
        "node": ctx.get_node_id(),
        "task": ctx.get_task_id(),
        "actor": ctx.get_actor_id(),
        "resources": ctx.get_assigned_resources(),
    }


first, second = ray.get([where_am_i.remote(), where_am_i.remote()])
assert first["job"] == driver_job and first["node"] == driver_node
# Each task has an id of its own (hex); a task is no actor.
assert first["task"] and second["task"] and first["task"] != second["task"]
int(first["task"], 16)
assert first["actor"] is None
assert first["resources"] == {"CPU": 1.0}


@ray.remote
class Introspective:
    def my_actor_id(self):
        return ray.get_runtime_context().get_actor_id()

    def my_job_id(self):
        return ray.get_runtime_context().get_job_id()


actor = Introspective.remote()
assert ray.get(actor.my_actor_id.remote()) == actor._actor_id.hex()
assert ray.get(actor.my_job_id.remote()) == driver_job
print("runtime context ok")
ray.shutdown()
