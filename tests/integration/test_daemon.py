"""The daemon skeleton (``runtime._daemon``), through a tiny daemon run as a real process.

Ready file after the server is bound, settings from the environment and the flags,
SIGTERM -> graceful stop, parent gone -> graceful stop, bad flags -> usage naming the
flag, a missing token or a taken port -> exit code 1 with the reason in the log.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from runtime._session import write_token
from runtime.cluster.process import ProcessHandle, ProcessStartError

pytestmark = pytest.mark.timeout(60)

REPO = pathlib.Path(__file__).resolve().parents[2]

TINY = textwrap.dedent('''
    import argparse, logging, sys
    from runtime._daemon import Daemon, DaemonContext, SettingFlag

    logger = logging.getLogger("tiny")

    def arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--greeting", default="hello")

    def check(args: argparse.Namespace) -> str | None:
        return None if args.greeting.isalpha() else f"--greeting must be a word, got {args.greeting!r}"

    DAEMON = Daemon("tiny", prog="tiny", add_arguments=arguments, check=check,
                    settings_flags=(SettingFlag("--beat-ms", "heartbeat_ms", "a beat"),))

    async def serve(ctx: DaemonContext) -> int:
        stopped = []
        ctx.on_stop(lambda: stopped.append("callback"))
        _, port = await ctx.serve([])
        ctx.ready(port, greeting=ctx.args.greeting, heartbeat_ms=ctx.settings.heartbeat_ms,
                  stop_grace_s=ctx.settings.stop_grace_s, token=ctx.token)
        logger.info("serving on %s", ctx.address(port))
        await ctx.stopping.wait()
        logger.info("stopping gracefully after %s", stopped)
        return 0

    sys.exit(DAEMON.run(serve))
''')


@pytest.fixture
def tiny(tmp_path: pathlib.Path) -> pathlib.Path:
    script = tmp_path / "tiny.py"
    script.write_text(TINY)
    return script


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLRAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**env, **extra}


def _session(tmp_path: pathlib.Path) -> pathlib.Path:
    session = tmp_path / "session"
    (session / "logs").mkdir(parents=True)
    write_token(session)
    return session


def _args(session: pathlib.Path, *extra: str) -> list[str]:
    return ["--session-dir", str(session), "--token-file", str(session / "token"), *extra]


def _start(tiny: pathlib.Path, session: pathlib.Path, *extra: str, **env: str) -> ProcessHandle:
    # ProcessHandle runs `python -m MODULE`: the script's directory on PYTHONPATH makes it one.
    return ProcessHandle("tiny", "tiny", _args(session, *extra), session / "logs" / "tiny.log",
                           session / "tiny.ready", env=_env(PYTHONPATH=os.pathsep.join(
                               [str(tiny.parent), str(REPO)]), **env))


def test_ready_after_bound_and_sigterm_stops_gracefully(tiny: pathlib.Path, tmp_path: pathlib.Path) -> None:
    session = _session(tmp_path)
    handle = _start(tiny, session, "--greeting", "hi", "--beat-ms", "250",
                    CELLRAY_STOP_GRACE_S="0.25")
    try:
        info = handle.wait_ready(30)
        assert info["pid"] == handle.pid and info["address"] == f"127.0.0.1:{info['port']}"
        assert (info["greeting"], info["heartbeat_ms"], info["stop_grace_s"]) == ("hi", 250, 0.25)
        assert info["token"] == (session / "token").read_text().strip()
        with socket.create_connection(("127.0.0.1", info["port"]), timeout=5):
            pass  # the ready file came after the bind
    finally:
        code = handle.stop(grace=10)
    log = handle.log_path.read_text()
    assert code == 0, log
    assert f"INFO tiny[{handle.pid}] tiny: serving on 127.0.0.1:" in log
    assert "stopping gracefully after ['callback']" in log


def test_the_daemon_stops_gracefully_when_its_parent_is_gone(tiny: pathlib.Path,
                                                             tmp_path: pathlib.Path) -> None:
    session = _session(tmp_path)
    log = session / "logs" / "tiny.log"
    ready = session / "tiny.ready"
    parent = textwrap.dedent(f'''
        import os, subprocess, sys
        args = [sys.executable, {str(tiny)!r}, *{_args(session)!r}, "--ready-file", {str(ready)!r},
                "--parent-pid", str(os.getpid())]
        with open({str(log)!r}, "ab") as log:
            child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        print(child.pid, flush=True)
        sys.stdin.read()
    ''')
    proc = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=_env(CELLRAY_PARENT_CHECK_S="0.05"))
    assert proc.stdout is not None and proc.stdin is not None
    pid = int(proc.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        proc.stdin.close()  # the parent exits
        proc.wait(10)
        deadline = time.monotonic() + 20
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the daemon outlived its parent"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
    assert "stopping gracefully" in log.read_text()


def _run(tiny: pathlib.Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(tiny), *args], capture_output=True, text=True, timeout=30,
                          env=_env(**env))


@pytest.mark.parametrize(("extra", "message"), [
    (["--beat-ms", "5"], "argument --beat-ms: must be an integer >= 10, got 5"),
    (["--beat-ms", "often"], "argument --beat-ms: must be an integer, got 'often'"),
    (["--port", "70000"], "argument --port: must be in 0..65535, got 70000"),
    (["--beat-ms", "20000"], "the settings: setting node_timeout_ms (env CELLRAY_NODE_TIMEOUT_MS) "
                             "must be more than heartbeat_ms (20000)"),
    (["--greeting", "a b"], "--greeting must be a word, got 'a b'"),
    ([], "the following arguments are required: --ready-file"),
])
def test_a_bad_flag_exits_with_usage_naming_it(tiny: pathlib.Path, tmp_path: pathlib.Path,
                                               extra: list[str], message: str) -> None:
    session = _session(tmp_path)
    ready = [] if not extra else ["--ready-file", str(tmp_path / "r")]
    proc = _run(tiny, *_args(session, *ready, *extra))
    assert proc.returncode == 2 and message in proc.stderr and "usage: tiny" in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_bad_environment_setting_exits_with_usage_naming_the_variable(
        tiny: pathlib.Path, tmp_path: pathlib.Path) -> None:
    session = _session(tmp_path)
    proc = _run(tiny, *_args(session, "--ready-file", str(tmp_path / "r")), CELLRAY_STOP_GRACE_S="-1")
    assert proc.returncode == 2, proc.stderr
    assert "setting stop_grace_s (env CELLRAY_STOP_GRACE_S) must be a number > 0, got -1.0" in proc.stderr


def test_a_missing_token_file_fails_with_its_log(tiny: pathlib.Path, tmp_path: pathlib.Path) -> None:
    session = _session(tmp_path)
    (session / "token").unlink()
    handle = _start(tiny, session)
    try:
        with pytest.raises(ProcessStartError, match=r"(?s)exited with code 1.*token file .* does not exist"):
            handle.wait_ready(30)
    finally:
        handle.stop(grace=10)


def test_a_taken_port_fails_with_its_log(tiny: pathlib.Path, tmp_path: pathlib.Path) -> None:
    session = _session(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        handle = _start(tiny, session, "--port", str(taken.getsockname()[1]))
        try:
            with pytest.raises(ProcessStartError, match=r"(?s)exited with code 1.*could not start tiny on"):
                handle.wait_ready(30)
        finally:
            handle.stop(grace=10)
    assert not (session / "tiny.ready").exists()
