"""The pure parts behind ``cellray``: argument checks, the status table, processes.json."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from runtime import _session, cli
from runtime.cluster import commands, registry
from runtime.cluster.restarts import RestartCounts
from runtime.cluster.status import ClusterStatus, NodeStatus, format_bytes, format_status


def parse(*argv: str) -> object:
    return cli.build_parser().parse_args(list(argv))


def test_start_arguments_are_typed() -> None:
    args = parse("start", "--head", "--cpus", "2.5", "--gpus", "1", "--resources", '{"sim": 4}',
                 "--object-store-memory", "1000000", "--num-nodes", "3", "--port", "0")
    assert vars(args) | {"func": None, "parser": None} == {
        "command": "start", "head": True, "address": None, "port": 0, "host": "127.0.0.1",
        "token_file": None, "cpus": 2.5, "gpus": 1.0, "resources": {"sim": 4.0},
        "object_store_memory": 1_000_000, "num_nodes": 3, "global_schedulers": None, "func": None,
        "parser": None, "gcs_storage": None, "redis_shards": None, "bundle": None, "tls": False,
        "insecure": False}


def test_storage_arguments_of_a_head() -> None:
    args = parse("start", "--head", "--gcs-storage", "sqlite:///var/lib/cellray/gcs.db")
    assert (args.gcs_storage, args.redis_shards) == ("sqlite:///var/lib/cellray/gcs.db", None)
    args = parse("start", "--head", "--gcs-storage", "redis://127.0.0.1:6379,127.0.0.1:6380")
    assert args.gcs_storage == "redis://127.0.0.1:6379,127.0.0.1:6380"
    assert parse("start", "--head", "--redis-shards", "4").redis_shards == 4
    assert parse("start", "--head", "--gcs-storage", "memory").gcs_storage == "memory"


@pytest.mark.parametrize("argv, message", [
    (["start", "--head", "--resources", '{"CPU": 2}'], "set CPU with --cpus, not --resources"),
    (["start", "--head", "--resources", '{"sim": true}'], "must be a non-negative number"),
    (["start", "--head", "--resources", '{"sim": NaN}'], "must be a non-negative number"),
    (["start", "--head", "--port", "70000"], "expected a port in 0..65535"),
    (["start", "--head", "--num-nodes", "0"], "expected an integer >= 1"),
    (["start", "--head", "--gpus", "-1"], "expected a number >= 0"),
    (["start", "--address", ":6380"], "expected HOST:PORT"),
    (["start", "--address", "127.0.0.1:6380", "--port", "1"], "--port is for --head"),
    (["start", "--head", "--gcs-storage", "sqlite://relative.db"], "is not absolute"),
    (["start", "--head", "--gcs-storage", "postgres://db"], "unknown backend 'postgres'"),
    (["start", "--head", "--gcs-storage", "redis://nohost"], "is not HOST:PORT"),
    (["start", "--head", "--redis-shards", "0"], "expected an integer >= 1"),
    (["start", "--head", "--redis-shards", "2", "--gcs-storage", "sqlite"],
     "--redis-shards starts Redis servers for the GCS's tables, so it does not go with --gcs-storage"),
    (["start", "--address", "127.0.0.1:6380", "--gcs-storage", "memory"],
     "--gcs-storage is for --head"),
    (["frobnicate"], "invalid choice"),
    (["stop", "--all", "--address", "127.0.0.1:6380"], "not allowed with argument"),
    (["stop", "--address", "6380"], "expected HOST:PORT"),
])
def test_bad_arguments_exit_2_with_one_line(argv: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "start" in capsys.readouterr().err


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1536, 5 * 2**30)] == [
        "0 B", "1023 B", "1.5 KiB", "5.0 GiB"]


def test_status_table_lists_live_nodes_first_and_counts_jobs() -> None:
    live = NodeStatus(node_id="ab" * 16, address="127.0.0.1:4001", alive=True, death_cause="",
                      total={"sim": 4, "GPU": 1, "CPU": 2}, available={"CPU": 1, "GPU": 1, "sim": 4},
                      queue_length=3, store_used=1536, store_capacity=2**30, workers=2)
    dead = NodeStatus(node_id="cd" * 16, address="127.0.0.1:4002", alive=False,
                      death_cause="no heartbeat for 10 s")
    text = format_status(ClusterStatus(address="127.0.0.1:6380", session_dir="/s", gcs_pid=7,
                                       num_shards=4, nodes=[live, dead], jobs_total=2,
                                       jobs_running=1))
    lines = text.splitlines()
    assert lines[0] == "cluster 127.0.0.1:6380  (GCS pid 7, 4 shards, session /s)"
    assert lines[1] == "storage: unknown; GCS restarts: 0"
    assert lines[2] == "nodes: 1 alive, 1 dead"
    assert lines[3].split() == ["node", "address", "alive", "resources", "(free/total)", "queue",
                                "object", "store", "(used/capacity)", "workers"]
    assert lines[4].split() == ["abababababab", "127.0.0.1:4001", "yes", "CPU", "1/2,", "GPU",
                                "1/1,", "sim", "4/4", "3", "1.5", "KiB", "/", "1.0", "GiB", "2"]
    assert lines[5].startswith("cdcdcdcdcdcd  127.0.0.1:4002  no (no heartbeat for 10 s)")
    assert lines[6] == "jobs: 2 (1 running)"


def test_status_shows_the_storage_and_what_the_head_restarted() -> None:
    node = NodeStatus(node_id="ab" * 16, address="127.0.0.1:1", alive=True, death_cause="",
                      total={"CPU": 2.0, "memory": 2.0 * 2**30}, available={"CPU": 2.0, "memory": 2**30})
    restarts = RestartCounts(gcs=2, schedulers={"gs-1": 1, "gs-0": 3},
                             not_restarted={"gcs": "it exited 6 times within 60 s"})
    text = format_status(ClusterStatus(
        address="127.0.0.1:6380", session_dir="/s", gcs_pid=7, num_shards=4, nodes=[node],
        jobs_total=0, jobs_running=0, storage="sqlite:///s/gcs.db", cluster_id="12fe42591709" * 2,
        restarts=restarts))
    lines = text.splitlines()
    assert lines[1] == ("storage: sqlite:///s/gcs.db (cluster id 12fe42591709); GCS restarts: 2; "
                        "global scheduler restarts: gs-0 3, gs-1 1")
    assert lines[2] == "not restarted: the GCS: it exited 6 times within 60 s"
    assert "CPU 2/2, memory 1.0 GiB/2.0 GiB" in text


def test_restart_counts_survive_their_json_and_unreadable_ones_read_as_zero() -> None:
    counts = RestartCounts(gcs=1, schedulers={"gs-0": 2}, not_restarted={"gs-1": "why"})
    assert RestartCounts.decode(counts.encode()) == counts
    for raw in (None, b"", b"{not json", b"[1]", b'{"gcs": "x", "schedulers": [1]}'):
        assert RestartCounts.decode(raw) == RestartCounts()


def test_processes_json_merges_heads_and_joined_nodes(tmp_path: pathlib.Path) -> None:
    registry.record(tmp_path, head=10, nodes=[11], detached=False, schedulers=[9])  # rt.init
    registry.record(tmp_path, head=None, nodes=[12], detached=True)  # cellray start --address
    assert json.loads((tmp_path / "processes.json").read_text()) == {
        "head": 10, "schedulers": [9], "nodes": [11, 12], "detached": [12]}
    registry.forget(tmp_path, {12})
    assert registry.read(tmp_path) == registry.Recorded(head=10, nodes=[11, 12], detached=[],
                                                        schedulers=[9])


def test_processes_json_records_the_head_as_it_is_now(tmp_path: pathlib.Path) -> None:
    registry.record_head(tmp_path, gcs=None, schedulers=None, supervisor=5, detached=True)  # CLI
    registry.record_head(tmp_path, gcs=6, schedulers=[7, 8], supervisor=5, detached=True)
    registry.record(tmp_path, head=None, nodes=[9], detached=True)
    registry.record_head(tmp_path, gcs=10, schedulers=[11, 8], supervisor=5, detached=True)  # restarts
    assert json.loads((tmp_path / "processes.json").read_text()) == {
        "head": 10, "schedulers": [11, 8], "nodes": [9], "supervisor": 5,
        "detached": [5, 6, 7, 8, 9, 10, 11]}
    assert registry.read(tmp_path) == registry.Recorded(
        head=10, nodes=[9], detached=[5, 6, 7, 8, 9, 10, 11], schedulers=[11, 8], supervisor=5)


def test_processes_json_keeps_keys_it_does_not_know(tmp_path: pathlib.Path) -> None:
    (tmp_path / "processes.json").write_text(json.dumps({"head": 1, "nodes": [], "future": {"x": 1}}))
    registry.record(tmp_path, head=None, nodes=[2], detached=True)
    assert json.loads((tmp_path / "processes.json").read_text())["future"] == {"x": 1}


def test_unreadable_processes_json_reads_as_none(tmp_path: pathlib.Path) -> None:
    assert registry.read(tmp_path) is None
    (tmp_path / "processes.json").write_text("{not json")
    assert registry.read(tmp_path) is None


def test_sessions_skip_the_latest_link_and_pids_must_be_cluster_processes(
        tmp_path: pathlib.Path) -> None:
    first = _session.new_session_dir(tmp_path)
    second = _session.new_session_dir(tmp_path)
    assert (tmp_path / "session_latest").is_symlink()
    assert set(registry.sessions(tmp_path)) == {first, second}
    assert registry.sessions(tmp_path / "missing") == []
    # This pytest process is alive, but it is not a GCS or node of that session.
    assert not registry.is_cluster_process(os.getpid(), first, "head")
    registry.record(first, head=os.getpid(), nodes=[], detached=True)
    assert registry.running_heads(tmp_path) == []
    assert registry.stop_detached(tmp_path) == []


def test_sessions_newest_first_is_session_latest_then_by_creation_time(
        tmp_path: pathlib.Path) -> None:
    first = _session.new_session_dir(tmp_path)
    second = _session.new_session_dir(tmp_path)
    third = _session.new_session_dir(tmp_path)
    # Touching an older session (a GCS restart rewrites its processes.json) does not make it newest.
    registry.record(first, head=None, nodes=[], detached=False)
    by_creation = sorted([first, second], key=lambda d: d.name, reverse=True)
    assert registry.sessions(tmp_path) == [third, *by_creation]
    (tmp_path / "session_latest").unlink()
    (tmp_path / "session_latest").symlink_to(first.name)
    assert registry.sessions(tmp_path)[0] == first


def test_addresses_on_this_machine_compare_by_port() -> None:
    assert registry.same_address("127.0.0.1:6380", "localhost:6380")
    assert registry.same_address("0.0.0.0:6380", "127.0.0.1:6380")
    assert registry.same_address("10.0.0.5:6380", "10.0.0.5:6380")
    assert not registry.same_address("127.0.0.1:6380", "127.0.0.1:6381")
    assert not registry.same_address("10.0.0.5:6380", "127.0.0.1:6380")


def test_stop_without_a_cluster_is_a_no_op_but_a_named_one_must_run(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_session, "ROOT", tmp_path)
    monkeypatch.delenv("CELLRAY_ADDRESS", raising=False)
    assert commands.stop_cluster() == []
    with pytest.raises(commands.CommandError, match=r"no process of the cluster at "
                       r"127\.0\.0\.1:6380 runs on this machine \(no `cellray start` cluster"):
        commands.stop_cluster("127.0.0.1:6380")
    monkeypatch.setenv("CELLRAY_ADDRESS", "127.0.0.1:6390")  # what `cellray status` would show
    with pytest.raises(commands.CommandError, match=r"cluster at 127\.0\.0\.1:6390"):
        commands.stop_cluster()


def test_status_lists_each_gpu_with_live_use() -> None:
    node = NodeStatus(node_id="ab" * 16, address="127.0.0.1:1", alive=True, death_cause="",
                      total={"CPU": 2.0, "GPU": 1.0}, available={"CPU": 2.0, "GPU": 1.0},
                      gpus=((0, "NVIDIA H100", 37.0, 2 * 2**30, 80 * 2**30),))
    text = format_status(ClusterStatus(address="127.0.0.1:6380", session_dir="/s", gcs_pid=7,
                                       num_shards=4, nodes=[node], jobs_total=0, jobs_running=0))
    assert "GPU 0: NVIDIA H100, 37% busy, memory 2.0 GiB / 80.0 GiB" in text
