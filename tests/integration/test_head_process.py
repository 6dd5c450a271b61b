"""The real head process (`python -m runtime.gcs`): start, wait ready, ping, stop, gone."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys

import pytest

from runtime._session import read_token, write_token
from runtime.cluster.process import ProcessHandle, ProcessStartError
from runtime.gcs.client import GcsClient
from runtime.protocol import common_pb2, gcs_pb2

pytestmark = pytest.mark.timeout(60)

REPO = pathlib.Path(__file__).resolve().parents[2]


def start_head(session: pathlib.Path, *extra: str) -> ProcessHandle:
    session.mkdir(parents=True, exist_ok=True)
    token_file = session / "token"
    if not token_file.exists():
        write_token(session)
    args = ["--host", "127.0.0.1", "--port", "0", "--session-dir", str(session),
            "--token-file", str(token_file), "--num-shards", "4", "--parent-pid", str(os.getpid()), *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return ProcessHandle("gcs", "runtime.gcs", args, session / "logs" / "gcs.log", session / "gcs.ready", env=env)


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def ping_and_register(address: str, token: str) -> gcs_pb2.PingReply:
    async with GcsClient(address, token) as gcs:
        await gcs.register_node(gcs_pb2.NodeRow(node_id=b"n" * 16, address="127.0.0.1:1"))
        assert await gcs.heartbeat(b"n" * 16, common_pb2.NodeLoad())
        return await gcs.ping()


def test_head_starts_serves_and_stops_on_sigterm(tmp_path: pathlib.Path) -> None:
    session = tmp_path / "session"
    head = start_head(session)
    try:
        info = head.wait_ready(timeout=30)
        assert info["pid"] == head.pid and info["address"] == f"127.0.0.1:{info['port']}"
        assert (session / "address").read_text() == info["address"]
        ping = asyncio.run(ping_and_register(info["address"], read_token(session / "token")))
        assert (ping.pid, ping.num_shards, ping.session_dir) == (head.pid, 4, str(session))
    finally:
        code = head.stop(grace=10)
    assert code == 0, (session / "logs" / "gcs.log").read_text()
    assert_gone(head.pid)
    log = (session / "logs" / "gcs.log").read_text()
    assert f"gcs[{head.pid}]" in log and "GCS stopped" in log


def test_admin_shutdown_stops_the_head(tmp_path: pathlib.Path) -> None:
    session = tmp_path / "session"
    head = start_head(session, "--heartbeat-ms", "100", "--node-timeout-ms", "2000")
    try:
        info = head.wait_ready(timeout=30)

        async def shutdown() -> None:
            async with GcsClient(info["address"], read_token(session / "token")) as gcs:
                await gcs.shutdown()

        asyncio.run(shutdown())
        assert head.popen.wait(timeout=30) == 0
    finally:
        head.stop(grace=10)
    assert_gone(head.pid)


def test_a_head_that_cannot_start_fails_with_its_log(tmp_path: pathlib.Path) -> None:
    session = tmp_path / "session"
    session.mkdir()
    head = ProcessHandle("gcs", "runtime.gcs", [
        "--session-dir", str(session), "--token-file", str(session / "missing-token")],
        session / "logs" / "gcs.log", session / "gcs.ready",
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        with pytest.raises(ProcessStartError, match="token file .* does not exist"):
            head.wait_ready(timeout=30)
    finally:
        head.stop(grace=10)
    assert_gone(head.pid)


def test_bad_arguments_exit_with_usage() -> None:
    proc = subprocess.run([sys.executable, "-m", "runtime.gcs", "--session-dir", "x", "--token-file", "t",
                           "--ready-file", "r", "--num-shards", "0"], cwd=REPO, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "--num-shards: must be an integer >= 1" in proc.stderr
