"""The task API on real processes: init/shutdown/attach, remote and its options, get,
wait, put, ObjectRefs as arguments, nested tasks, and resources."""

from __future__ import annotations

import asyncio
import os
import pathlib
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import psutil
import pytest

import runtime as rt
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.exceptions import GetTimeoutError, TaskError
from runtime.gcs.client import GcsClient
from runtime.protocol import gcs_pb2
from runtime.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def _lines(path: pathlib.Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---- lifecycle: these start their own clusters, so they run before `cluster` is used ----

def test_init_starts_processes_and_shutdown_leaves_none(our_cluster_pids: Callable[[], Any]) -> None:
    assert not rt.is_initialized()
    info = rt.init(num_cpus=2)
    try:
        assert rt.is_initialized() and info.started_here

        @rt.remote
        def pid() -> int:
            return os.getpid()

        worker_pid = rt.get(pid.remote())
        pids = our_cluster_pids()
        assert len(pids["gcs"]) == 1 and len(pids["node"]) == 1, pids
        assert worker_pid in pids["worker"], (worker_pid, pids)
        everyone = {os.getpid(), worker_pid, *pids["gcs"], *pids["node"]}
        assert len(everyone) == 4  # driver, head, node manager and worker are 4 processes
        assert rt.cluster_resources()["CPU"] == 2
    finally:
        rt.shutdown()
    assert not rt.is_initialized()
    left = [p for kind in pids.values() for p in kind if _alive(p)]
    assert not left, f"processes still running after shutdown: {left}"
    # Queries need a connection (a .remote() would start a new cluster, as in Ray).
    with pytest.raises(RuntimeError, match=r"init\(\)"):
        rt.nodes()


def test_shutdown_stops_running_tasks_and_every_process(
        our_cluster_pids: Callable[[], Any], make_flag: Callable[[str], Any], tmp_path: pathlib.Path) -> None:
    rt.init(num_cpus=2)
    try:
        @rt.remote
        def forever(flag: Any, started: str) -> None:
            pathlib.Path(started).write_text(str(os.getpid()))
            flag.wait()

        never = make_flag("never")
        refs = [forever.remote(never, str(tmp_path / f"started-{i}")) for i in range(3)]
        wait_for(lambda: len(list(tmp_path.glob("started-*"))) == 2, what="two tasks to be running")
        pids = our_cluster_pids()
    finally:
        rt.shutdown()
    del refs
    left = [p for kind in pids.values() for p in kind if _alive(p)]
    assert not left, f"processes still running after shutdown: {left}"


DIES = r"""
import os, signal, runtime as rt
info = rt.init(num_cpus=2)
@rt.remote
def f():
    return os.getpid()
rt.get([f.remote() for _ in range(4)])
print(info.session_dir, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_driver_leaves_no_process_behind(subprocess_env: Callable[..., dict[str, str]]) -> None:
    out = subprocess.run([sys.executable, "-c", DIES], env=subprocess_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == -9, out.stderr
    session = out.stdout.strip()
    assert session, out.stderr

    def started_by_it() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            if session in " ".join(p.info["cmdline"] or ()) and _alive(p.pid):
                found.append(p)
        return found

    # Cluster processes watch their parent and stop (with their workers) when it is gone.
    wait_for(lambda: not started_by_it(), timeout=15,
             what="the cluster of a SIGKILLed driver to stop by itself")


def test_shutdown_closes_the_drivers_io_loop() -> None:
    rt.init(num_cpus=1)
    from runtime.api import _context  # white box: the loop is the client's own
    loop = _context.current()._loop
    rt.shutdown()
    assert loop.is_closed()


def test_second_init_raises_unless_ignore_reinit_error() -> None:
    info = rt.init(num_cpus=1)
    try:
        with pytest.raises(RuntimeError, match="ignore_reinit_error"):
            rt.init(num_cpus=1)
        assert rt.init(ignore_reinit_error=True) == info
        assert rt.is_initialized()
    finally:
        rt.shutdown()
    assert not rt.is_initialized()


# ---- attaching from another driver process --------------------------------------------

DRIVER = r"""
import sys
import runtime as rt
address, token_file = sys.argv[1], sys.argv[2] or None
try:
    rt.init(address=address, token_file=token_file)
except Exception as e:
    print(f"INIT-ERROR {type(e).__name__} permission={isinstance(e, PermissionError)}: {e}")
    sys.exit(3)

@rt.remote
def add(a, b):
    return a + b

print("RESULT", rt.get(add.remote(2, 3), timeout=30), rt.is_initialized())
rt.shutdown()
"""


@pytest.fixture(scope="module")
def session_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("cellray-root")


@pytest.fixture(scope="module")
def local_cluster(session_root: pathlib.Path) -> Iterator[LocalCluster]:
    with LocalCluster([NodeSpec(num_cpus=1)], session_root=session_root) as c:
        yield c


def _drive(address: str, token_file: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", DRIVER, address, token_file], env=env,
                          capture_output=True, text=True, timeout=60, cwd="/")


def test_attach_from_a_driver_process_with_token_file(
        local_cluster: LocalCluster, subprocess_env: Callable[..., dict[str, str]]) -> None:
    out = _drive(local_cluster.address, str(local_cluster.token_file), subprocess_env())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RESULT 5 True" in out.stdout


def test_attach_with_wrong_token_file_says_to_pass_the_token_file(
        local_cluster: LocalCluster, tmp_path: pathlib.Path,
        subprocess_env: Callable[..., dict[str, str]]) -> None:
    wrong = tmp_path / "token"
    wrong.write_text(secrets.token_hex(32))
    out = _drive(local_cluster.address, str(wrong), subprocess_env())
    assert out.returncode == 3, out.stdout + out.stderr
    assert "INIT-ERROR UnauthenticatedError permission=True" in out.stdout
    assert "token_file" in out.stdout and "token" in out.stdout


def test_attach_without_token_file_finds_it_in_the_session_dir(
        local_cluster: LocalCluster, session_root: pathlib.Path,
        subprocess_env: Callable[..., dict[str, str]]) -> None:
    # The session root is read from CELLRAY_TMPDIR (default /tmp/cellray) when runtime loads.
    out = _drive(local_cluster.address, "", subprocess_env(CELLRAY_TMPDIR=str(session_root)))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RESULT 5 True" in out.stdout


def test_attach_without_token_file_outside_the_session_root_says_to_pass_it(
        local_cluster: LocalCluster, tmp_path: pathlib.Path,
        subprocess_env: Callable[..., dict[str, str]]) -> None:
    out = _drive(local_cluster.address, "", subprocess_env(CELLRAY_TMPDIR=str(tmp_path)))
    assert out.returncode == 3, out.stdout + out.stderr
    assert "INIT-ERROR UnauthenticatedError permission=True" in out.stdout
    assert "token_file" in out.stdout


# ---- the shared cluster from here on ---------------------------------------------------

@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    return {"num_cpus": 2, "num_gpus": 2, "resources": {"custom": 2}}


@rt.remote
def add(a: int, b: int) -> int:
    return a + b


@rt.remote
def identity(x: Any) -> Any:
    return x


@rt.remote
def pid_task() -> int:
    return os.getpid()


def test_remote_bare_and_with_options(cluster: rt.ClusterInfo, gcs: Any) -> None:
    assert rt.get(add.remote(1, 2)) == 3

    @rt.remote(num_cpus=1, num_gpus=1, resources={"custom": 1}, max_retries=0, name="renamed")
    def configured(x: int) -> int:
        return x * 10

    ref = configured.remote(4)
    assert rt.get(ref) == 40
    wait_for(lambda: (row := gcs.task_row(ref)) is not None and row.state == "FINISHED",
             what="the task's FINISHED row in the GCS")
    row = gcs.task_row(ref)
    assert row.name == "renamed"


def test_num_returns(cluster: rt.ClusterInfo, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"

    @rt.remote(num_returns=0)
    def nothing(path: str) -> None:
        pathlib.Path(path).touch()

    @rt.remote(num_returns=3)
    def three() -> tuple[int, int, int]:
        return 1, 2, 3

    assert nothing.remote(str(marker)) is None
    wait_for(marker.exists, what="the num_returns=0 task to run")
    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert all(isinstance(r, rt.ObjectRef) for r in refs)
    assert rt.get(refs) == [1, 2, 3]
    one = identity.options(num_returns=1).remote("x")
    assert isinstance(one, rt.ObjectRef) and rt.get(one) == "x"


def test_options_returns_a_copy(cluster: rt.ClusterInfo) -> None:
    two = identity.options(num_returns=2, name="pair")
    a, b = two.remote((5, 6))
    assert rt.get([a, b]) == [5, 6]
    assert isinstance(identity.remote(7), rt.ObjectRef)  # the original is unchanged
    with pytest.raises(ValueError, match="num_cpus"):
        identity.options(num_cpus=-1)


def test_calling_a_remote_function_directly_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"add\.remote\(\)"):
        add(1, 2)


@pytest.mark.parametrize("option, value, error", [
    ("num_cpus", -1, ValueError),
    ("num_cpus", "2", TypeError),
    ("num_gpus", -0.5, ValueError),
    ("num_gpus", 1.5, ValueError),
    ("resources", {"custom": -1}, ValueError),
    ("resources", ["custom"], TypeError),
    ("resources", {"CPU": 1}, ValueError),
    ("num_returns", -1, ValueError),
    ("num_returns", 1.5, TypeError),
    ("max_retries", -2, ValueError),
    ("max_retries", "3", TypeError),
    ("retry_exceptions", [42], TypeError),
    ("retry_exceptions", "yes", TypeError),
    ("name", 3, TypeError),
    ("no_such_option", 1, ValueError),
])
def test_bad_option_values_name_the_option(option: str, value: Any, error: type[Exception]) -> None:
    match = "resources" if option == "resources" else option
    with pytest.raises(error, match=match):
        rt.remote(**{option: value})(lambda: None)
    with pytest.raises(error, match=match):
        identity.options(**{option: value})


def test_max_retries_and_retry_exceptions(cluster: rt.ClusterInfo, tmp_path: pathlib.Path) -> None:
    @rt.remote
    def flaky(path: str, first: type[Exception]) -> int:
        """Raise ``first`` on the first attempt; return the number of attempts after."""
        _append(path, "attempt")
        attempts = len(_lines(pathlib.Path(path)))
        if attempts == 1:
            raise first("first attempt fails")
        return attempts

    def attempts_file(name: str) -> str:
        return str(tmp_path / name)

    # An exception is not retried by default, only a worker crash is.
    with pytest.raises(ValueError, match="first attempt fails"):
        rt.get(flaky.remote(attempts_file("default"), ValueError))
    # retry_exceptions=True: any exception is retried (up to max_retries).
    assert rt.get(flaky.options(retry_exceptions=True).remote(attempts_file("all"), KeyError)) == 2
    # A list: only those types.
    listed = flaky.options(retry_exceptions=[ValueError])
    assert rt.get(listed.remote(attempts_file("listed"), ValueError)) == 2
    with pytest.raises(KeyError):
        rt.get(listed.remote(attempts_file("other"), KeyError))
    # max_retries=0: no second attempt even with retry_exceptions.
    with pytest.raises(ValueError):
        rt.get(flaky.options(retry_exceptions=True, max_retries=0).remote(attempts_file("zero"), ValueError))
    assert [len(_lines(tmp_path / n)) for n in ("default", "all", "listed", "other", "zero")] == [1, 2, 2, 1, 1]


# ---- get, wait, put ------------------------------------------------------------------

def test_get_one_or_a_list_in_order(cluster: rt.ClusterInfo) -> None:
    refs = [add.remote(i, 100) for i in range(30)]
    assert rt.get(refs) == [i + 100 for i in range(30)]
    assert rt.get(refs[7]) == 107
    assert rt.get(tuple(refs[:3])) == [100, 101, 102]
    assert rt.get([]) == []


def test_get_returns_results_in_list_order_whatever_order_they_finish(
        cluster: rt.ClusterInfo, make_flag: Callable[[str], Any]) -> None:
    first, second = make_flag("first"), make_flag("second")

    @rt.remote
    def after(flag: Any, value: str) -> str:
        flag.wait()
        return value

    slow, fast = after.remote(first, "slow"), after.remote(second, "fast")
    second.set()
    ready, _ = rt.wait([slow, fast], num_returns=1)
    assert ready == [fast]
    first.set()
    assert rt.get([slow, fast]) == ["slow", "fast"]


def test_get_timeout_raises_get_timeout_error(cluster: rt.ClusterInfo,
                                              make_flag: Callable[[str], Any]) -> None:
    flag = make_flag("release")

    @rt.remote
    def held(flag: Any) -> str:
        flag.wait()
        return "done"

    ref = held.remote(flag)
    try:
        with pytest.raises(GetTimeoutError) as info:
            rt.get(ref, timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        with pytest.raises(TimeoutError):
            rt.get([add.remote(1, 1), ref], timeout=0)
        with pytest.raises(ValueError, match="timeout"):
            rt.get(ref, timeout=-1)
    finally:
        flag.set()
    assert rt.get(ref) == "done"
    assert rt.get(ref, timeout=0) == "done"


def test_get_timeout_inside_a_task_is_honoured(cluster: rt.ClusterInfo,
                                               make_flag: Callable[[str], Any]) -> None:
    cpu_flag, flag = make_flag("cpu"), make_flag("release")

    @rt.remote
    def held(flag: Any) -> str:
        flag.wait()
        return "done"

    # Three resource shapes, so the node cannot queue one task behind another of the same
    # shape on a busy worker: `held` can only run nested in the blocked `polls`.
    @rt.remote(num_cpus=1, resources={"custom": 0.5})
    def polls(flag: Any) -> list[str]:
        ref = held.remote(flag)  # no CPU is free for it until this task blocks
        out = []
        for call in (lambda: rt.get(ref, timeout=0.2), lambda: rt.wait([ref], timeout=0)):
            try:
                out.append(repr(call()))
            except GetTimeoutError:
                out.append("timed out")
        return out

    hog = held.options(resources={"custom": 1}).remote(cpu_flag)  # holds the other CPU
    try:
        wait_for(lambda: (n := rt.nodes()[0])["Available"].get("CPU") == 1
                 and n["QueueLength"] == 0, what="one task holding one CPU")
        ref = polls.remote(flag)
        out = rt.get(ref, timeout=5)
    finally:
        cpu_flag.set()
        flag.set()
    rt.get(hog)
    assert out[0] == "timed out" and out[1].startswith("([], [ObjectRef(")


def test_wait(cluster: rt.ClusterInfo, make_flag: Callable[[str], Any]) -> None:
    flag = make_flag("release")

    @rt.remote
    def held(flag: Any) -> str:
        flag.wait()
        return "held"

    done_a, blocked, done_b = add.remote(1, 1), held.remote(flag), add.remote(2, 2)
    try:
        rt.get([done_a, done_b])
        refs = [done_a, blocked, done_b]
        assert rt.wait(refs, num_returns=2) == ([done_a, done_b], [blocked])
        ready, not_ready = rt.wait(refs, num_returns=1)
        assert len(ready) == 1 and ready[0] in (done_a, done_b) and len(not_ready) == 2
        assert rt.wait(refs, num_returns=3, timeout=0) == ([done_a, done_b], [blocked])
        assert rt.wait(refs, num_returns=3, timeout=0.1) == ([done_a, done_b], [blocked])
        assert rt.wait([blocked], timeout=0) == ([], [blocked])
    finally:
        flag.set()
    assert rt.wait([blocked, done_a], num_returns=2) == ([blocked, done_a], [])


@pytest.mark.parametrize("call, error, match", [
    (lambda r: rt.wait(r, num_returns=0), ValueError, "num_returns"),
    (lambda r: rt.wait(r, num_returns=3), ValueError, "num_returns"),
    (lambda r: rt.wait([r[0], r[0]]), ValueError, "unique"),
    (lambda r: rt.wait(r, timeout=-1), ValueError, "timeout"),
    (lambda r: rt.wait(r[0]), TypeError, "list"),
    (lambda r: rt.wait(set(r)), TypeError, "list"),
    (lambda r: rt.wait([1, 2]), TypeError, "ObjectRef"),
    (lambda r: rt.wait(r, num_returns=1.5), TypeError, "num_returns"),
])
def test_wait_rejects_bad_arguments(cluster: rt.ClusterInfo, call: Callable[[list[rt.ObjectRef]], Any],
                                    error: type[Exception], match: str) -> None:
    refs = [add.remote(1, 2), add.remote(3, 4)]
    with pytest.raises(error, match=match):
        call(refs)


def test_put_and_pass_put_refs(cluster: rt.ClusterInfo) -> None:
    value = {"a": [1, 2, 3], "b": "text"}
    ref = rt.put(value)
    assert isinstance(ref, rt.ObjectRef)
    assert rt.get(ref) == value
    assert rt.get(identity.remote(ref)) == value
    with pytest.raises(TypeError, match="put"):
        rt.put(ref)


# ---- ObjectRefs as arguments, nested tasks ---------------------------------------------

def test_top_level_refs_arrive_as_values_nested_refs_stay_refs(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    def inspect_args(a: Any, listed: list[Any], mapping: dict[str, Any], *, kw: Any) -> dict[str, Any]:
        return {
            "a": (type(a).__name__, a),
            "kw": (type(kw).__name__, kw),
            "listed": (type(listed[0]).__name__, rt.get(listed[0])),
            "mapping": (type(mapping["r"]).__name__, rt.get(mapping["r"])),
        }

    x, y = rt.put(10), add.remote(5, 6)
    out = rt.get(inspect_args.remote(x, [y], {"r": x}, kw=y))
    assert out == {"a": ("int", 10), "kw": ("int", 11), "listed": ("ObjectRef", 11),
                   "mapping": ("ObjectRef", 10)}


def test_tasks_submit_tasks_and_get_and_wait(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    def parent(n: int) -> tuple[list[int], int]:
        refs = [add.remote(i, i) for i in range(n)]
        ready, not_ready = rt.wait(refs, num_returns=n)
        assert not not_ready
        return rt.get(refs), len(ready)

    assert rt.get(parent.remote(5)) == ([0, 2, 4, 6, 8], 5)


@rt.remote
def fib(n: int) -> int:
    if n < 2:
        return n
    return sum(rt.get([fib.remote(n - 1), fib.remote(n - 2)]))


def test_recursive_fibonacci_on_two_cpus(cluster: rt.ClusterInfo) -> None:
    # Far more tasks block in get than there are CPUs: each lends its CPU back.
    assert rt.get(fib.remote(12), timeout=50) == 144


# ---- resources -------------------------------------------------------------------------

@rt.remote(num_cpus=2)
def exclusive(tag: str, log: str, flag: Any) -> str:
    _append(log, f"start {tag}")
    flag.wait()
    _append(log, f"end {tag}")
    return tag


def test_tasks_wait_until_resources_free_up(cluster: rt.ClusterInfo, gcs: Any, tmp_path: pathlib.Path,
                                            make_flag: Callable[[str], Any]) -> None:
    log, flag = tmp_path / "log", make_flag("release")
    refs = {tag: exclusive.remote(tag, str(log), flag) for tag in "ab"}
    try:
        lines = wait_for(lambda: _lines(log), what="one num_cpus=2 task to start")
        assert len(lines) == 1, f"both num_cpus=2 tasks run at once on 2 CPUs: {lines}"
        other = refs["b" if lines[0] == "start a" else "a"]
        # The node has the other task (it reported it to the GCS) and no CPU left.
        wait_for(lambda: gcs.task_row(other) is not None, what="the other task's row in the GCS")
        wait_for(lambda: rt.nodes()[0]["Available"].get("CPU") == 0, what="no CPU left")
        assert len(_lines(log)) == 1, "both num_cpus=2 tasks run at once on 2 CPUs"
    finally:
        flag.set()
    assert sorted(rt.get(list(refs.values()))) == ["a", "b"]
    first, second = _lines(log)[0].split()[1], _lines(log)[2].split()[1]
    assert _lines(log) == [f"start {first}", f"end {first}", f"start {second}", f"end {second}"]


def test_custom_resources_and_logical_gpus(cluster: rt.ClusterInfo, gcs: Any, tmp_path: pathlib.Path,
                                           make_flag: Callable[[str], Any]) -> None:
    total = rt.cluster_resources()
    assert total["GPU"] == 2 and total["custom"] == 2 and total["CPU"] == 2
    flag = make_flag("release")
    log = tmp_path / "log"

    @rt.remote(num_cpus=0, resources={"custom": 2})
    def hold_custom(tag: str, log: str, flag: Any) -> str:
        _append(log, f"start {tag}")
        flag.wait()
        _append(log, f"end {tag}")
        return tag

    @rt.remote(num_gpus=1)
    def gpu_task() -> str:
        return "gpu"

    refs = {tag: hold_custom.remote(tag, str(log), flag) for tag in "ab"}
    try:
        lines = wait_for(lambda: _lines(log), what="one task holding all of 'custom' to start")
        assert len(lines) == 1, f"two tasks hold all of 'custom' at once: {lines}"
        other = refs["b" if lines[0] == "start a" else "a"]
        # CPUs are free, so only the custom resource keeps the other task waiting.
        assert rt.get([gpu_task.remote(), gpu_task.options(num_gpus=2).remote()]) == ["gpu", "gpu"]
        wait_for(lambda: gcs.task_row(other) is not None, what="the other task's row in the GCS")
        assert len(_lines(log)) == 1, "two tasks hold all of 'custom' at once"
    finally:
        flag.set()
    assert sorted(rt.get(list(refs.values()))) == ["a", "b"]
    assert [line.split()[0] for line in _lines(log)] == ["start", "end", "start", "end"]


def test_infeasible_task_stays_pending_and_warns_once(cluster: rt.ClusterInfo,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    @rt.remote(resources={"nope": 1})
    def never() -> None:
        pass

    refs = [never.remote(), never.remote()]
    try:
        assert rt.wait(refs, num_returns=2, timeout=0) == ([], refs)
        # Ops on the driver's stream arrive in order: once this later task's result is
        # here, both infeasible tasks' warnings (if any) were handled before it.
        assert rt.get(add.remote(1, 1)) == 2
        seen = ""

        def warned() -> bool:
            nonlocal seen
            seen += capfd.readouterr().err
            return "nope" in seen
        wait_for(warned, what="the infeasible warning on stderr")
        assert seen.count("Warning") == 1, seen
        assert "never()" in seen and "nope: 1" in seen
        assert rt.wait(refs, num_returns=2, timeout=0) == ([], refs)
    finally:
        for r in refs:
            rt.cancel(r)
    for r in refs:
        with pytest.raises(rt.exceptions.TaskCancelledError):
            rt.get(r, timeout=10)


def test_task_errors_arrive_as_the_original_type(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    def boom() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError) as info:
        rt.get(boom.remote())
    assert isinstance(info.value, TaskError)


# ---- task events: the GCS tasks table and its pub/sub channel --------------------------

def test_task_state_changes_reach_the_gcs_table_and_pubsub(cluster: rt.ClusterInfo, gcs: Any) -> None:
    async def watch() -> tuple[rt.ObjectRef, list[str]]:
        async with GcsClient(gcs.address, gcs.token) as client:
            sub = client.subscribe(["tasks"])
            try:
                async for msg in sub:
                    if msg.snapshot_done:
                        break
                ref = add.remote(20, 22)  # submitting does not wait on the network
                key = bytes.fromhex(ref.task_id())
                states: list[str] = []
                async with asyncio.timeout(20):
                    async for msg in sub:
                        if msg.table == "tasks" and msg.key == key:
                            states.append(gcs_pb2.TaskRow.FromString(msg.value).state)
                            if states[-1] == "FINISHED":
                                break
            finally:
                await sub.aclose()
        return ref, states

    ref, states = asyncio.run(watch())
    assert states == ["SUBMITTED", "RUNNING", "FINISHED"]
    assert rt.get(ref) == 42
    row = gcs.task_row(ref)
    assert row.state == "FINISHED" and row.name == "add" and row.attempt == 0
    assert [h.state for h in row.history] == ["SUBMITTED", "RUNNING", "FINISHED"]
    assert row.node_id.hex() == cluster.node_id and row.job_id.hex() == cluster.job_id
    assert row.worker_pid not in (0, os.getpid())
    assert 0 < row.submit_time <= row.start_time <= row.end_time


def test_failed_task_state_reaches_the_gcs(cluster: rt.ClusterInfo, gcs: Any) -> None:
    @rt.remote
    def fails() -> None:
        raise RuntimeError("to the tasks table")

    ref = fails.remote()
    with pytest.raises(RuntimeError):
        rt.get(ref)
    row = wait_for(lambda: (r := gcs.task_row(ref)) is not None and r.state == "FAILED" and r,
                   what="the FAILED row in the GCS")
    assert "RuntimeError" in row.detail and "to the tasks table" in row.detail
