"""A session's secrets go with its processes (issue 12, point 7): ``rt.shutdown()`` and
``cellray stop`` leave no token and no key in the sessions they stop (a head's, or a node's
joined with a bundle or a token file from "another machine": another ``CELLRAY_TMPDIR``),
while the files passed in and the logs stay; after a crash (every process SIGKILLed) the
next start removes them from the session it keeps for its logs."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
from collections.abc import Callable, Iterator

import pytest

import runtime as rt
from runtime import _session, _tls
from runtime.cluster import registry
from runtime.testing.wait import wait_for
from tests.cluster.test_cli import free_port, ok, processes_of, run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def secrets_in(session: pathlib.Path) -> list[pathlib.Path]:
    """The token and key files left in ``session`` (any ``token``, ``*.key``, ``join.json``)."""
    return sorted(p for p in session.rglob("*")
                  if p.name in ("token", "join.json") or p.suffix == ".key")


def logs_in(session: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (session / "logs").iterdir() if p.stat().st_size > 0)


@pytest.fixture
def machines(tmp_path: pathlib.Path, subprocess_env: Callable[..., dict[str, str]],
             ) -> Iterator[tuple[dict[str, str], pathlib.Path, dict[str, str], pathlib.Path]]:
    """``(head env, head root, other env, other root)``: two "machines", each with its own
    session root; ``cellray stop --all`` on both at teardown, the other one first."""
    head_root, other_root = tmp_path / "head", tmp_path / "other"
    head, other = (subprocess_env(CELLRAY_TMPDIR=str(head_root)),
                   subprocess_env(CELLRAY_TMPDIR=str(other_root)))
    try:
        yield head, head_root, other, other_root
    finally:
        ok(run_cli(other, "stop", "--all"))
        ok(run_cli(head, "stop", "--all"))


def test_shutdown_removes_the_token_and_keeps_the_logs(
        tmp_session_root: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_session, "ROOT", tmp_session_root)
    info = rt.init(num_cpus=1)
    try:
        session = pathlib.Path(info.session_dir)
        assert session.parent == tmp_session_root and (session / "token").is_file()
        assert rt.get(rt.remote(lambda: 1).remote(), timeout=60) == 1
    finally:
        rt.shutdown()
    assert secrets_in(session) == []
    assert "gcs.log" in logs_in(session) and "node-0.log" in logs_in(session)


def _start_head(env: dict[str, str], root: pathlib.Path, *tls: str) -> tuple[str, pathlib.Path]:
    port = free_port()
    ok(run_cli(env, "start", "--head", *tls, "--port", str(port), "--cpus", "1",
               "--global-schedulers", "1"))
    return f"127.0.0.1:{port}", (root / "session_latest").resolve()


def test_cellray_stop_removes_the_secrets_of_a_tls_head_and_of_a_node_joined_with_its_bundle(
        machines: tuple[dict[str, str], pathlib.Path, dict[str, str], pathlib.Path],
        tmp_path: pathlib.Path) -> None:
    head_env, head_root, other_env, other_root = machines
    address, head_session = _start_head(head_env, head_root, "--tls")
    # The bundle as a user would hand it over: copied out of the head's session.
    bundle = tmp_path / "join.json"
    shutil.copy(_tls.bundle_path(_tls.tls_dir_of(head_session)), bundle)
    ok(run_cli(other_env, "start", "--address", address, "--bundle", str(bundle), "--cpus", "1"))
    other_session = (other_root / "session_latest").resolve()
    assert (other_session / "token").is_file() and (other_session / "tls" / "node.key").is_file()

    stopped = ok(run_cli(other_env, "stop"))
    assert "stopped node manager" in stopped and "head" not in stopped
    assert secrets_in(other_session) == [] and "node-0.log" in logs_in(other_session)
    assert bundle.is_file() and _tls.read_bundle(bundle).token  # what was passed in stays
    assert secrets_in(head_session) != []  # the head still runs: its secrets stay

    ok(run_cli(head_env, "stop"))
    assert secrets_in(head_session) == []
    assert {"gcs.log", "node-0.log"} <= set(logs_in(head_session))
    assert processes_of(head_root) == [] and processes_of(other_root) == []


def test_cellray_stop_removes_the_token_of_a_node_joined_with_a_token_file(
        machines: tuple[dict[str, str], pathlib.Path, dict[str, str], pathlib.Path],
        tmp_path: pathlib.Path) -> None:
    head_env, head_root, other_env, other_root = machines
    address, head_session = _start_head(head_env, head_root)
    token_file = tmp_path / "cluster.token"
    shutil.copy(head_session / "token", token_file)
    ok(run_cli(other_env, "start", "--address", address, "--token-file", str(token_file),
               "--cpus", "1"))
    other_session = (other_root / "session_latest").resolve()
    assert (other_session / "token").is_file()

    ok(run_cli(other_env, "stop"))
    assert secrets_in(other_session) == [] and "node-0.log" in logs_in(other_session)
    assert token_file.read_text() == _session.read_token(head_session / "token")

    ok(run_cli(head_env, "stop"))
    assert secrets_in(head_session) == [] and "gcs.log" in logs_in(head_session)
    assert token_file.is_file()


def _kill_all(root: pathlib.Path, session: pathlib.Path) -> bool:
    """SIGKILL the session's supervisor (so that it restarts nothing), then every process
    under ``root`` still running; True once none runs."""
    rec = registry.read(session)
    assert rec is not None and rec.supervisor is not None
    pids = processes_of(root)
    for pid in ([rec.supervisor] if rec.supervisor in pids else []) + pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return not pids


def test_the_next_start_removes_the_secrets_of_a_cluster_killed_with_sigkill(
        machines: tuple[dict[str, str], pathlib.Path, dict[str, str], pathlib.Path]) -> None:
    head_env, head_root, _, _ = machines
    _, crashed = _start_head(head_env, head_root, "--tls")
    assert (crashed / "token").is_file() and (crashed / "tls" / "ca.key").is_file()
    wait_for(lambda: _kill_all(head_root, crashed), timeout=60,
             what="every process of the cluster to be killed")
    assert secrets_in(crashed) != []  # nobody stopped it: its secrets are still there

    _, fresh = _start_head(head_env, head_root)
    assert fresh != crashed and crashed.is_dir()  # kept for its logs
    assert secrets_in(crashed) == [] and "gcs.log" in logs_in(crashed)
    assert json.loads((crashed / "processes.json").read_text())["head"] is not None
    assert (fresh / "token").is_file()  # the running cluster keeps its own
