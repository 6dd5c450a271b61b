"""``python -m runtime.demo``: a short tour of cellray on a local two-CPU cluster.

It starts a cluster with ``rt.init(num_cpus=2)``, runs real remote work and prints what
happened, section by section: a fan-out of tasks, a task whose prints stream back, a
numpy array through the object store (read back without a copy), a recursive task tree,
a remote error caught as its original type, the cluster's resources; then it shuts the
cluster down. Exit code 0 when every step did what it should, 1 otherwise.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

import runtime as rt
from runtime.protocol.resources import describe


@rt.remote
def square(x: int) -> int:
    """The fan-out's unit of work."""
    return x * x


@rt.remote
def count_down(n: int) -> str:
    """A task that prints: its lines stream back to this terminal, tagged with its pid."""
    for i in range(n, 0, -1):
        print(f"count_down: {i}...")
    print("count_down: liftoff")
    return "done"


@rt.remote
def fib(n: int) -> int:
    """A task tree: each call below 2 submits two more tasks and waits for them."""
    if n < 2:
        return n
    return sum(rt.get([fib.remote(n - 1), fib.remote(n - 2)]))


@rt.remote
def parse_port(text: str) -> int:
    """Fails in the worker for bad input; the driver gets the original ValueError."""
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1..65535")
    return port


@contextmanager
def _section(title: str) -> Iterator[None]:
    print(f"\n== {title}", flush=True)
    start = time.perf_counter()
    yield
    print(f"   ({(time.perf_counter() - start) * 1000:.0f} ms)", flush=True)


def _fan_out() -> None:
    with _section("fan-out: square(i) for i in 0..99, as 100 tasks"):
        values = rt.get([square.remote(i) for i in range(100)])
        print(f"   first ten: {values[:10]}")
        print(f"   sum of squares: {sum(values)} (expected {sum(i * i for i in range(100))})")
        assert values == [i * i for i in range(100)]


def _prints() -> None:
    with _section("a task that prints (its output streams back here)"):
        print(f"   count_down returned {rt.get(count_down.remote(3))!r}", flush=True)


def _put_get() -> None:
    with _section("rt.put / rt.get of a numpy array"):
        array = np.arange(2_000_000, dtype=np.float64).reshape(1000, 2000)
        checksum = zlib.crc32(array.data)
        back = rt.get(rt.put(array))
        same = zlib.crc32(back.data) == checksum and np.array_equal(back, array)
        zero_copy = not back.flags.owndata and not back.flags.writeable
        print(f"   put {array.shape} {array.dtype} ({array.nbytes / 1e6:.0f} MB), "
              f"crc32 {checksum:08x}")
        print(f"   got {back.shape} {back.dtype}, crc32 {zlib.crc32(back.data):08x}: "
              f"{'identical' if same else 'DIFFERENT'}")
        print(f"   zero-copy read-only view of shared memory: {'yes' if zero_copy else 'no'} "
              f"(owndata={back.flags.owndata}, writeable={back.flags.writeable})")
        assert same


def _task_tree() -> None:
    with _section("nested tasks: recursive fib(10), each call a task"):
        print(f"   fib(10) = {rt.get(fib.remote(10))} (177 tasks)")


def _error() -> None:
    with _section("an error in a task, caught as its original type"):
        try:
            rt.get(parse_port.remote("70000"))
        except ValueError as err:  # a TaskError that is also a ValueError
            last = str(err).strip().splitlines()[-1]
            print(f"   caught {type(err).__name__}; isinstance(err, ValueError) = "
                  f"{isinstance(err, ValueError)}")
            print(f"   remote traceback ends with: {last}")
        else:
            raise AssertionError("parse_port('70000') did not raise")


def _resources() -> None:
    with _section("cluster resources"):
        print(f"   total:     {describe(rt.cluster_resources())}")
        print(f"   available: {describe(rt.available_resources())} (as of the latest heartbeats)")
        for node in rt.nodes():
            print(f"   node {node['NodeID'][:12]} at {node['NodeManagerAddress']}:"
                  f"{node['NodeManagerPort']}, alive={node['Alive']}")


STEPS: list[Callable[[], None]] = [_fan_out, _prints, _put_get, _task_tree, _error, _resources]


def main() -> int:
    """Run the tour; return 0 when every step worked."""
    start = time.perf_counter()
    info = rt.init(num_cpus=2)
    print(f"cellray demo: started a local cluster at {info.address} in "
          f"{time.perf_counter() - start:.2f} s (session {info.session_dir})", flush=True)
    try:
        for step in STEPS:
            step()
    except Exception as err:  # noqa: BLE001 - report any failed step, still shut the cluster down
        print(f"\ndemo step failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        rt.shutdown()
    print("\nshut the cluster down; demo finished OK.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
