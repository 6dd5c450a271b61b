"""Session directories: old ones of clusters that are gone are pruned (the newest kept for
their logs, without their secrets), those of live clusters never; a stopped cluster's
token and TLS files are removed, never a file a link there points to."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from runtime import _session


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _make(root: pathlib.Path, i: int, pid: int, stamp: str = "2026-01-01_00-00") -> pathlib.Path:
    d = root / f"session_{stamp}-{i:02d}_{pid}_ab{i:02d}"
    (d / "logs").mkdir(parents=True)
    return d


def _secrets(d: pathlib.Path) -> None:
    (d / "token").write_text("t")
    (d / "tls").mkdir()
    (d / "tls" / "node.key").write_text("k")


@pytest.fixture
def daemon_of() -> Iterator[Callable[[pathlib.Path], int]]:
    """``daemon_of(session_dir)``: a live process whose command line names the session,
    as the cluster's daemons' do (``--session-dir``); stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(session_dir: pathlib.Path) -> int:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()",
                                 "--session-dir", str(session_dir)], stdin=subprocess.PIPE)
        procs.append(proc)
        return proc.pid

    yield start
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def test_old_sessions_of_gone_clusters_are_pruned_and_live_ones_kept(
        tmp_path: pathlib.Path, daemon_of: Callable[[pathlib.Path], int]) -> None:
    dead = _dead_pid()
    gone = [_make(tmp_path, i, dead) for i in range(6)]
    detached = _make(tmp_path, 7, dead)  # its maker exited, a process it recorded lives
    (detached / "processes.json").write_text(json.dumps({"head": daemon_of(detached), "nodes": [dead]}))
    # A recorded pid that runs now, but not as a process of that session (reused): gone.
    reused = _make(tmp_path, 8, dead)
    (reused / "processes.json").write_text(json.dumps({"head": os.getpid()}))
    newest = [_make(tmp_path, 10 + i, dead) for i in range(2)]
    # Made by this process (a driver) a moment ago: the newest, and alive.
    mine = _make(tmp_path, 0, os.getpid(), stamp=time.strftime("%Y-%m-%d_%H-%M"))
    removed = _session.prune_sessions(tmp_path, keep=3)
    assert sorted(removed) == sorted([*gone, reused])
    assert all(d.exists() for d in [mine, detached, *newest])


def test_a_session_named_after_a_pid_reused_since_is_gone(tmp_path: pathlib.Path) -> None:
    # This process started after 2026-01-01 00:00:05: it did not make that session.
    old = _make(tmp_path, 5, os.getpid())
    _secrets(old)
    assert not _session.in_use(old)
    assert _session.prune_sessions(tmp_path, keep=0) == [old]


def test_kept_sessions_of_crashed_clusters_lose_their_secrets_and_keep_their_logs(
        tmp_path: pathlib.Path, daemon_of: Callable[[pathlib.Path], int]) -> None:
    dead = _dead_pid()
    crashed = _make(tmp_path, 1, dead)
    (crashed / "processes.json").write_text(json.dumps({"head": dead, "nodes": [dead]}))
    live = _make(tmp_path, 2, dead)
    (live / "processes.json").write_text(json.dumps({"nodes": [daemon_of(live)]}))
    for d in (crashed, live):
        _secrets(d)
        (d / "logs" / "gcs.log").write_text("log")
    assert _session.prune_sessions(tmp_path, keep=10) == []
    assert not (crashed / "token").exists() and not (crashed / "tls").exists()
    assert (crashed / "logs" / "gcs.log").read_text() == "log"
    assert (live / "token").exists() and (live / "tls" / "node.key").exists()


def test_a_new_session_prunes_and_a_stopped_cluster_loses_its_token(tmp_path: pathlib.Path) -> None:
    dead = _dead_pid()
    old = [_make(tmp_path, i, dead) for i in range(_session.KEEP_SESSIONS + 3)]
    _secrets(old[-1])
    path = _session.new_session_dir(tmp_path)
    token = _session.write_token(path)
    left = sorted(tmp_path.glob("session_*_*"))
    assert path in left and len(left) == _session.KEEP_SESSIONS
    assert not old[0].exists() and old[-1].exists()
    assert not (old[-1] / "token").exists() and not (old[-1] / "tls").exists()
    assert token.exists()  # its maker (this process) runs: in use
    _session.remove_secrets(path)
    assert not token.exists() and (path / "logs").is_dir()


def test_remove_secrets_unlinks_links_and_leaves_what_they_point_to(tmp_path: pathlib.Path) -> None:
    session = tmp_path / "session"
    (session / "logs").mkdir(parents=True)
    mine = tmp_path / "mine"
    (mine / "tls").mkdir(parents=True)
    (mine / "token").write_text("t")
    (mine / "tls" / "node.key").write_text("k")
    (session / "token").symlink_to(mine / "token")
    (session / "tls").symlink_to(mine / "tls")
    _session.remove_secrets(session)
    assert not (session / "token").is_symlink() and not (session / "tls").is_symlink()
    assert (mine / "token").read_text() == "t" and (mine / "tls" / "node.key").read_text() == "k"
