"""Session directories: old ones of clusters that are gone are pruned (the newest kept for
their logs), those of live clusters never; a stopped cluster's token is removed."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from runtime import _session


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _make(root: pathlib.Path, i: int, pid: int) -> pathlib.Path:
    d = root / f"session_2026-01-01_00-00-{i:02d}_{pid}_ab{i:02d}"
    (d / "logs").mkdir(parents=True)
    return d


def test_old_sessions_of_gone_clusters_are_pruned_and_live_ones_kept(tmp_path: pathlib.Path) -> None:
    dead = _dead_pid()
    gone = [_make(tmp_path, i, dead) for i in range(6)]
    mine = _make(tmp_path, 6, os.getpid())  # old, but its maker lives
    detached = _make(tmp_path, 7, dead)  # its maker exited, a process it recorded lives
    (detached / "processes.json").write_text(json.dumps({"head": os.getpid(), "nodes": [dead]}))
    newest = [_make(tmp_path, 10 + i, dead) for i in range(2)]
    removed = _session.prune_sessions(tmp_path, keep=2)
    assert sorted(removed) == sorted(gone)
    assert all(d.exists() for d in [mine, detached, *newest])


def test_a_new_session_prunes_and_a_stopped_cluster_loses_its_token(tmp_path: pathlib.Path) -> None:
    dead = _dead_pid()
    old = [_make(tmp_path, i, dead) for i in range(_session.KEEP_SESSIONS + 3)]
    path = _session.new_session_dir(tmp_path)
    token = _session.write_token(path)
    left = sorted(tmp_path.glob("session_*_*"))
    assert path in left and len(left) == _session.KEEP_SESSIONS
    assert not old[0].exists() and old[-1].exists()
    _session.remove_secrets(path)
    assert not token.exists() and (path / "logs").is_dir()
