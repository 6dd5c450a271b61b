"""Objects (docs.ray.io, "Ray Core / Objects" and "Passing object arguments"): put/get,
get with a timeout, refs as top-level arguments (resolved) and nested in a list (passed
as refs), and tasks that return refs (nested refs)."""

import os
import tempfile

import runtime as ray

ray.init()

# put stores a value and returns its ref; get returns a copy of the value.
ref = ray.put({"fruit": "apple", "count": 3})
assert ray.get(ref) == {"fruit": "apple", "count": 3}
assert ray.get([ray.put(i) for i in range(3)]) == [0, 1, 2]


@ray.remote
def never_ready(path):
    import time
    while not os.path.exists(path):
        time.sleep(0.01)
    return "done"


# A get with a timeout raises GetTimeoutError while the task is still running.
gate = os.path.join(tempfile.mkdtemp(), "gate")
pending = never_ready.remote(gate)
try:
    ray.get(pending, timeout=0.5)
except ray.exceptions.GetTimeoutError:
    pass
else:
    raise AssertionError("get should have timed out")
open(gate, "w").close()
assert ray.get(pending) == "done"


@ray.remote
def describe(arg):
    if isinstance(arg, ray.ObjectRef):
        return "a ref"
    if isinstance(arg, list):
        return [describe_item(x) for x in arg]
    return f"the value {arg}"


def describe_item(x):
    return "a ref" if isinstance(x, ray.ObjectRef) else f"the value {x}"


value_ref = ray.put(7)
# At the top level the task receives the value; inside a list it receives the ref itself.
assert ray.get(describe.remote(value_ref)) == "the value 7"
assert ray.get(describe.remote([value_ref])) == ["a ref"]


@ray.remote
def sum_refs(refs):
    return sum(ray.get(refs))


assert ray.get(sum_refs.remote([ray.put(i) for i in range(5)])) == 10


# A task can return refs to objects it created; the caller gets them nested.
@ray.remote
def make_parts():
    return [ray.put(i * i) for i in range(4)]


parts = ray.get(make_parts.remote())
assert all(isinstance(p, ray.ObjectRef) for p in parts)
assert ray.get(parts) == [0, 1, 4, 9]

print("objects ok")
ray.shutdown()
