"""The real ``cellray`` command line, run in subprocesses: start, status, attach, stop.

``cellray start`` detaches its processes (new session, reparented when the CLI exits), so
every test that starts one runs ``cellray stop --all`` in its fixture's teardown; the leak
checker then finds them by the ``PYTEST_CURRENT_TEST`` they inherited if any survive.
Each test gets its own ``CELLRAY_TMPDIR``, so it neither sees nor stops a developer's
clusters (or another test's).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import psutil
import pytest
import redis

from runtime import cli
from runtime.gcs.redis_servers import redis_server_path
from runtime.testing.wait import wait_for

pytestmark = pytest.mark.timeout(120)

IN_CI = os.environ.get("CI", "").lower() == "true"

#: Bound on one CLI call, so a hung command fails the test instead of the whole run.
CALL_TIMEOUT = 90

#: A driver script that attaches to the cluster at argv[1] and runs tasks on it.
DRIVER = """
import sys, runtime as rt
rt.init(address=sys.argv[1])
square = rt.remote(lambda x: x * x)
print("sum", sum(rt.get(square.remote(i)) for i in range(10)))
print("cpus", rt.cluster_resources()["CPU"])
rt.shutdown()
"""


def free_port() -> int:
    """A port nothing listens on right now (bind port 0, read it, close)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m runtime ARGS`` (the ``cellray`` entry point) with ``env``."""
    return subprocess.run([sys.executable, "-m", "runtime", *args], env=env, text=True,
                          capture_output=True, timeout=CALL_TIMEOUT, stdin=subprocess.DEVNULL,
                          check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """stdout of a call that must have succeeded; the failure shows both streams."""
    assert result.returncode == 0, (f"{result.args} exited {result.returncode}\n"
                                    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result.stdout


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def status_showing(env: dict[str, str], needle: str, *args: str) -> str:
    """``cellray status ARGS`` output, once it contains ``needle`` (heartbeats lag a little)."""
    def check() -> str:
        out = ok(run_cli(env, "status", *args))
        return out if needle in out else ""
    return wait_for(check, timeout=30, what=f"`cellray status` to show {needle!r}")


def processes_of(root: pathlib.Path) -> list[int]:
    """Live processes whose command line names a path under ``root`` (gcs, nodes, workers)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or ())
        if str(root) in cmdline and "runtime." in cmdline and alive(p.pid):
            found.append(p.pid)
    return found


@pytest.fixture
def cli_root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "cellray"


@pytest.fixture
def cli_env(cli_root: pathlib.Path,
            subprocess_env: Callable[..., dict[str, str]]) -> Iterator[dict[str, str]]:
    """The CLI's environment (sessions under ``cli_root``); ``cellray stop --all`` at teardown."""
    env = subprocess_env(CELLRAY_TMPDIR=str(cli_root))
    try:
        yield env
    finally:
        ok(run_cli(env, "stop", "--all"))


@pytest.mark.cluster
def test_start_status_attach_add_node_and_stop(cli_env: dict[str, str],
                                               cli_root: pathlib.Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    out = ok(run_cli(cli_env, "start", "--head", "--port", str(port), "--cpus", "1",
                     "--resources", '{"sim": 2}', "--global-schedulers", "3"))
    session = (cli_root / "session_latest").resolve()
    token_file = session / "token"
    assert f"head (GCS) at {address}" in out
    assert f'rt.init(address="{address}", token_file="{token_file}")' in out
    assert f"cellray start --address {address}" in out
    assert token_file.stat().st_mode & 0o777 == 0o600

    status = ok(run_cli(cli_env, "status"))
    assert f"cluster {address}" in status and "nodes: 1 alive" in status
    assert "CPU 1/1, " in status and ", sim 2/2" in status and "jobs: 0" in status

    added = ok(run_cli(cli_env, "start", "--address", address, "--cpus", "2", "--gpus", "1"))
    assert f"to the cluster at {address}" in added and "2 live node(s)" in added
    status = status_showing(cli_env, "nodes: 2 alive", "--address", address)
    assert "CPU 2/2, GPU 1/1" in status

    driver = subprocess.run([sys.executable, "-c", DRIVER, address], env=cli_env, text=True,
                            capture_output=True, timeout=CALL_TIMEOUT, check=False)
    assert ok(driver).split() == ["sum", "285", "cpus", "3.0"]
    status_showing(cli_env, "jobs: 1 (0 running)")

    pids = processes_of(cli_root)
    assert len(pids) >= 3, "expected at least the GCS and two node managers"
    schedulers = [p for p in pids if "runtime.scheduler" in " ".join(psutil.Process(p).cmdline())]
    assert len(schedulers) == 3, "--global-schedulers 3 starts three replicas"
    stopped = ok(run_cli(cli_env, "stop"))
    assert stopped.count("stopped node manager") == 2 and stopped.count("stopped head (GCS)") == 1
    assert f"Stopped {stopped.count('stopped ')} process(es) of the cluster at {address}." in stopped
    # The GCS and node managers are gone when stop returns; workers exit with their node.
    wait_for(lambda: not [p for p in pids if alive(p)], timeout=15,
             what=f"the cluster's processes {pids} to exit")
    assert processes_of(cli_root) == []

    again = ok(run_cli(cli_env, "stop"))
    assert "Nothing to stop" in again
    gone = run_cli(cli_env, "status")
    assert gone.returncode == 1 and "no cellray cluster is running" in gone.stderr


@pytest.mark.cluster
def test_the_detached_head_restarts_its_gcs_and_status_shows_storage_and_restarts(
        cli_env: dict[str, str], cli_root: pathlib.Path, tmp_path: pathlib.Path) -> None:
    db = tmp_path / "state" / "gcs.db"
    port = free_port()
    out = ok(run_cli(cli_env, "start", "--head", "--port", str(port), "--cpus", "1",
                     "--gcs-storage", f"sqlite://{db}"))
    assert f"storage:     sqlite://{db} (the head restarts the GCS from it when it dies)" in out
    session = (cli_root / "session_latest").resolve()
    recorded = json.loads((session / "processes.json").read_text())
    gcs, supervisor = recorded["head"], recorded["supervisor"]
    assert alive(supervisor) and "runtime.gcs.supervisor" in psutil.Process(supervisor).cmdline()
    status = ok(run_cli(cli_env, "status"))
    assert f"(GCS pid {gcs}," in status
    assert f"storage: sqlite://{db} (cluster id " in status and "; GCS restarts: 0" in status

    psutil.Process(gcs).kill()  # kill -9: the CLI that started it is long gone
    status = status_showing(cli_env, "GCS restarts: 1")
    new_gcs = json.loads((session / "processes.json").read_text())["head"]
    assert new_gcs != gcs and f"cluster 127.0.0.1:{port}  (GCS pid {new_gcs}," in status
    assert "nodes: 1 alive" in status
    assert "was killed by SIGKILL; restarting it" in (session / "logs" / "supervisor.log").read_text()

    pids = processes_of(cli_root)
    stopped = ok(run_cli(cli_env, "stop"))
    assert f"stopped head supervisor pid {supervisor}" in stopped
    assert f"stopped head (GCS) pid {new_gcs}" in stopped and stopped.count("stopped head (GCS)") == 1
    wait_for(lambda: not [p for p in pids if alive(p)], timeout=15,
             what=f"the cluster's processes {pids} to exit")
    assert processes_of(cli_root) == []


def need_redis() -> None:
    if redis_server_path() is None:
        why = ("redis-server is not installed, so `cellray start --head --redis-shards` is not tested "
               "here; install it with `apt-get install -y redis-server`")
        if IN_CI:
            pytest.fail(f"{why} (.ci/run installs it: CI must test Redis)")
        pytest.skip(why)


@pytest.mark.cluster
def test_a_head_with_redis_shards_owns_its_redis_servers_and_stop_leaves_none(
        cli_env: dict[str, str], cli_root: pathlib.Path) -> None:
    need_redis()
    port = free_port()
    out = ok(run_cli(cli_env, "start", "--head", "--port", str(port), "--cpus", "1", "--redis-shards", "2"))
    session = (cli_root / "session_latest").resolve()
    servers = json.loads((session / "redis" / "servers.json").read_text())["servers"]
    assert len(servers) == 2, servers
    ports, pids = [int(s["port"]) for s in servers], [int(s["pid"]) for s in servers]
    storage = f"redis://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]} (2 local redis-server processes)"
    assert f"storage:     {storage}" in out, out
    for server_port, pid in zip(ports, pids, strict=True):  # each one answers, as the pid recorded
        client = redis.Redis(host="127.0.0.1", port=server_port, socket_timeout=5)
        try:
            assert int(client.info("server")["process_id"]) == pid
        finally:
            client.close()

    status = ok(run_cli(cli_env, "status"))
    assert f"cluster 127.0.0.1:{port}  (GCS pid " in status and ", 2 shards," in status, status
    assert f"storage: {storage} (cluster id " in status and "nodes: 1 alive" in status, status

    cluster_pids = processes_of(cli_root)
    stopped = ok(run_cli(cli_env, "stop"))
    assert stopped.count("stopped head (GCS)") == 1, stopped
    # The GCS stops the servers it started (they die with it even when it is killed).
    gone(cluster_pids + pids)
    assert processes_of(cli_root) == []


@pytest.mark.parametrize("args, expected", [
    (["start", "--head", "--gcs-storage", "sqlite://x.db"], "argument --gcs-storage: must be"),
    (["start", "--head", "--redis-shards", "2", "--gcs-storage", "memory"],
     "--redis-shards starts Redis servers"),
])
def test_bad_storage_is_refused_before_anything_starts(cli_env: dict[str, str], cli_root: pathlib.Path,
                                                       args: list[str], expected: str) -> None:
    result = run_cli(cli_env, *args)
    assert result.returncode == 2 and expected in result.stderr
    assert not cli_root.exists() or not list(cli_root.glob("session_*"))


@pytest.mark.cluster
def test_two_clusters_status_picks_by_address(cli_env: dict[str, str]) -> None:
    first, second = free_port(), free_port()
    ok(run_cli(cli_env, "start", "--head", "--port", str(first), "--cpus", "1"))
    ok(run_cli(cli_env, "start", "--head", "--port", str(second), "--cpus", "1"))
    newest = ok(run_cli(cli_env, "status"))
    assert f"cluster 127.0.0.1:{second}" in newest
    assert f"other clusters run on this machine: 127.0.0.1:{first}" in newest
    assert f"cluster 127.0.0.1:{first}" in ok(run_cli(cli_env, "status", "--address",
                                                      f"127.0.0.1:{first}"))


def start_head(env: dict[str, str], root: pathlib.Path) -> tuple[str, list[int]]:
    """``cellray start --head`` on a free port: its address and its live processes."""
    address = f"127.0.0.1:{free_port()}"
    ok(run_cli(env, "start", "--head", "--port", address.rpartition(":")[2], "--cpus", "1",
               "--global-schedulers", "1"))
    session = (root / "session_latest").resolve()
    pids = processes_of(session)
    assert pids, f"no process of the cluster at {address} runs"
    return address, pids


def gone(pids: list[int]) -> None:
    """Wait until every process of ``pids`` has exited."""
    wait_for(lambda: not [p for p in pids if alive(p)], timeout=15, what=f"{pids} to exit")


@pytest.mark.cluster
def test_stop_stops_the_newest_cluster_or_the_named_one_and_all_stops_every_one(
        cli_env: dict[str, str], cli_root: pathlib.Path) -> None:
    first, first_pids = start_head(cli_env, cli_root)
    second, second_pids = start_head(cli_env, cli_root)
    third, third_pids = start_head(cli_env, cli_root)

    stopped = ok(run_cli(cli_env, "stop"))  # the newest: the third
    lines = [line for line in stopped.splitlines() if line.startswith("stopped ")]
    assert lines and all(f"of the cluster at {third} (" in line for line in lines), stopped
    assert f"Stopped {len(lines)} process(es) of the cluster at {third}." in stopped
    assert f"Still running on this machine: {second}, {first}" in stopped
    gone(third_pids)
    assert all(alive(p) for p in first_pids + second_pids)

    stopped = ok(run_cli(cli_env, "stop", "--address", first))  # named, though not the newest
    assert f"Stopped {stopped.count('stopped ')} process(es) of the cluster at {first}." in stopped
    gone(first_pids)
    assert all(alive(p) for p in second_pids)

    again = run_cli(cli_env, "stop", "--address", first)
    assert again.returncode == 1
    assert f"no process of the cluster at {first} runs on this machine" in again.stderr
    assert f"`cellray start` clusters running here: {second}" in again.stderr

    fourth, fourth_pids = start_head(cli_env, cli_root)
    stopped = ok(run_cli(cli_env, "stop", "--all"))
    assert stopped.count("stopped head (GCS)") == 2 and stopped.count("stopped node manager") == 2
    assert f"of the cluster(s) at {fourth}, {second}." in stopped and "Still running" not in stopped
    gone(second_pids + fourth_pids)
    assert processes_of(cli_root) == []
    assert "Nothing to stop" in ok(run_cli(cli_env, "stop"))


@pytest.mark.parametrize("args, expected", [
    (["start", "--head", "--resources", "{sim: 4}"], "argument --resources: not valid JSON"),
    (["start", "--head", "--resources", "[1, 2]"], "expected a JSON object"),
    (["start", "--head", "--resources", '{"sim": -1}'], "must be a non-negative number"),
    (["start", "--address", "localhost"], "argument --address: expected HOST:PORT"),
    (["start", "--address", "127.0.0.1:99999"], "argument --address: expected HOST:PORT"),
    (["status", "--address", "nohost:"], "argument --address: expected HOST:PORT"),
    (["start", "--head", "--cpus", "many"], "argument --cpus: expected a number >= 0"),
    (["start"], "start needs --head"),
    (["start", "--head", "--address", "127.0.0.1:6380"], "not allowed with argument"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli_env: dict[str, str], args: list[str],
                                                expected: str) -> None:
    result = run_cli(cli_env, *args)
    assert result.returncode == 2, result
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_no_cluster_status_fails_clearly_and_stop_is_a_no_op(cli_env: dict[str, str],
                                                            cli_root: pathlib.Path) -> None:
    status = run_cli(cli_env, "status")
    assert status.returncode == 1
    assert "no cellray cluster is running on this machine" in status.stderr
    assert "cellray start --head" in status.stderr and "Traceback" not in status.stderr
    stop = run_cli(cli_env, "stop")
    assert stop.returncode == 0 and "Nothing to stop" in stop.stdout


def test_add_node_without_token_or_head_fails_clearly(cli_env: dict[str, str],
                                                      tmp_path: pathlib.Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    no_token = run_cli(cli_env, "start", "--address", address)
    assert no_token.returncode == 1 and "no token for the cluster" in no_token.stderr
    token = tmp_path / "token"
    token.write_text("0" * 64)
    no_head = run_cli(cli_env, "start", "--address", address, "--token-file", str(token))
    assert no_head.returncode == 1
    assert f"could not reach the GCS at {address}" in no_head.stderr


def test_busy_port_is_refused_before_anything_starts(cli_env: dict[str, str],
                                                     cli_root: pathlib.Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(cli_env, "start", "--head", "--port", str(port))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert not cli_root.exists() or not list(cli_root.glob("session_*"))


def test_bench_without_script_says_where_it_looked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "BENCH_SCRIPT", tmp_path / "bench" / "microbench.py")
    assert cli.main(["bench"]) == 1
    assert f"{tmp_path / 'bench' / 'microbench.py'} does not exist" in capsys.readouterr().err
