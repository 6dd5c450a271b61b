"""ray.timeline (docs.ray.io, "Debugging and profiling / Timeline"): dump the tasks that
ran as a Chrome trace (chrome://tracing, Perfetto) and check its events."""

import json
import os
import tempfile
import time

import runtime as ray

ray.init()


@ray.remote
def stage_one(x):
    return x + 1


@ray.remote
def stage_two(x):
    return x * 10


assert ray.get([stage_two.remote(stage_one.remote(i)) for i in range(3)]) == [10, 20, 30]



def stage_bars(events):
    """The complete ("X") events of our two stages: one per task, with start and duration."""
    return [e for e in events if e.get("ph") == "X" and e["name"].startswith("stage_")]


# Task events reach the cluster's state in batches, shortly after the tasks end (in Ray
# too): poll the timeline until all six tasks are in it.
deadline = time.monotonic() + 60
while len(stage_bars(ray.timeline())) < 6:
    assert time.monotonic() < deadline, "the six tasks never reached the timeline"
    time.sleep(0.05)

path = os.path.join(tempfile.mkdtemp(), "timeline.json")
ray.timeline(filename=path)
with open(path) as f:
    bars = stage_bars(json.load(f))

names = sorted(e["name"] for e in bars)
assert [n.split(".")[-1] for n in names] == ["stage_one"] * 3 + ["stage_two"] * 3, names
assert all(e["dur"] >= 0 and "ts" in e and "pid" in e and "tid" in e for e in bars)

print("timeline ok")
ray.shutdown()
