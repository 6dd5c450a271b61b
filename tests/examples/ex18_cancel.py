"""Cancelling tasks (docs.ray.io, "Ray Core / Tasks / Cancelling tasks" and ray.cancel):
a running task is interrupted and its ref raises TaskCancelledError; force=True kills
the worker; a finished task keeps its value."""

import os
import tempfile
import time

import runtime as ray

ray.init()
scratch = tempfile.mkdtemp()


@ray.remote
def forever(started):
    open(started, "w").close()
    while True:
        time.sleep(0.05)  # a long computation, interrupted by ray.cancel


def wait_until_exists(path):
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


started = os.path.join(scratch, "started")
ref = forever.remote(started)
wait_until_exists(started)  # the task is running now
ray.cancel(ref)
try:
    ray.get(ref)
except ray.exceptions.TaskCancelledError:
    pass
else:
    raise AssertionError("a cancelled task should raise TaskCancelledError")

# force=True kills the worker process running the task.
started_again = os.path.join(scratch, "started-again")
ref = forever.remote(started_again)
wait_until_exists(started_again)
ray.cancel(ref, force=True)
try:
    ray.get(ref)
except (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError):
    pass
else:
    raise AssertionError("a force-cancelled task should not return")


@ray.remote
def quick():
    return "done"


finished = quick.remote()
assert ray.get(finished) == "done"
ray.cancel(finished)  # too late: nothing happens
assert ray.get(finished) == "done"

print("cancel ok")
ray.shutdown()
