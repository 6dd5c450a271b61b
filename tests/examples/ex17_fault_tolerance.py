"""Fault tolerance (docs.ray.io, "Task fault tolerance" and "Actor fault tolerance"):
max_retries re-runs a task whose worker died, retry_exceptions re-runs one that raised,
and max_restarts brings an actor back after its process died. Each failure happens once,
decided by a marker file, so the script is deterministic."""

import os
import tempfile

import runtime as ray

ray.init()
scratch = tempfile.mkdtemp()


def first_time(name):
    """True the first time it is called with `name` (in any process)."""
    marker = os.path.join(scratch, name)
    if os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True


# The worker process dies in the first attempt: max_retries runs the task again.
@ray.remote(max_retries=2)
def dies_once():
    if first_time("dies_once"):
        os._exit(1)
    return "survived"


assert ray.get(dies_once.remote()) == "survived"

# Without retries the caller sees the crash.
@ray.remote(max_retries=0)
def dies_always():
    os._exit(1)


try:
    ray.get(dies_always.remote())
except ray.exceptions.WorkerCrashedError:
    pass
else:
    raise AssertionError("the crash should have been reported")


# Application errors are retried only with retry_exceptions (True, or a list of classes).
@ray.remote(max_retries=1, retry_exceptions=[ConnectionError])
def flaky_fetch():
    if first_time("flaky_fetch"):
        raise ConnectionError("the service hiccuped")
    return "fetched"


assert ray.get(flaky_fetch.remote()) == "fetched"


@ray.remote(max_retries=3, retry_exceptions=[ConnectionError])
def wrong_input():
    raise KeyError("not retried: only ConnectionError is")


try:
    ray.get(wrong_input.remote())
except KeyError:
    pass
else:
    raise AssertionError("KeyError should reach the caller")


# An actor whose process dies is restarted (its constructor runs again) up to max_restarts.
@ray.remote(max_restarts=1)
class Service:
    def __init__(self):
        self.calls = 0

    def call(self):
        self.calls += 1
        return self.calls

    def crash(self):
        os._exit(1)


service = Service.remote()
assert ray.get([service.call.remote() for _ in range(3)]) == [1, 2, 3]


def crash(actor):
    try:
        ray.get(actor.crash.remote())
    except ray.exceptions.RayActorError:
        pass  # the call that killed the process fails (max_task_retries is 0)
    else:
        raise AssertionError("crash() should not return")


crash(service)
# The restarted actor starts from a fresh constructor: its state is new.
assert ray.get(service.call.remote()) == 1
assert ray.get(service.call.remote()) == 2

# The second death spends max_restarts=1: the actor stays dead.
crash(service)
try:
    ray.get(service.call.remote())
except ray.exceptions.RayActorError:
    pass
else:
    raise AssertionError("the actor should be dead for good")

print("fault tolerance ok")
ray.shutdown()
