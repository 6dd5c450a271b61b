"""LocalRedisServers: the ``redis-server`` processes a GCS started with ``--redis-shards N`` owns.

Each server gets its own data directory, ``<session dir>/redis/shard-<i>/`` (its append-only
file and its log, ``redis.log``), listens on ``127.0.0.1`` on a free port, and runs with
``appendonly yes`` / ``appendfsync everysec`` and no RDB snapshots (``save ""``): a server
killed loses nothing it acknowledged, and the machine crashing loses at most a second.

The ports and pids are kept in ``<session dir>/redis/servers.json``, so a GCS restarted
in the same session starts its servers again on the same ports, from the same files.
A server dies with the GCS that started it, even one killed by ``kill -9`` (Linux
``PR_SET_PDEATHSIG``: the server gets SIGTERM and saves its file); a restarted GCS first
waits for the servers of the one before it to be gone. A server is in its own process
group, so a signal to the GCS's group does not stop it before the GCS has saved its last
batch. ``stop()`` returns once every server has exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psutil
import redis

from runtime.gcs.storage import StorageError

logger = logging.getLogger(__name__)

__all__ = ["LocalRedisServers", "redis_server_path"]

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def redis_server_path() -> str | None:
    """The ``redis-server`` executable on PATH (or in /usr/sbin, /usr/bin), or None."""
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")


class LocalRedisServers:
    """``count`` local Redis servers with their data under ``data_dir``.

    Examples
    --------
    >>> servers = LocalRedisServers(2, session_dir / "redis")   # doctest: +SKIP
    >>> servers.start()                                          # doctest: +SKIP
    [('127.0.0.1', 41011), ('127.0.0.1', 41012)]
    >>> servers.stop()                                           # doctest: +SKIP
    """

    def __init__(self, count: int, data_dir: str | os.PathLike[str], *, host: str = "127.0.0.1",
                 start_timeout_s: float = 30.0) -> None:
        if count < 1:
            raise ValueError(f"LocalRedisServers needs count >= 1, got {count}")
        self.count, self.data_dir, self.host = count, pathlib.Path(data_dir), host
        self.start_timeout_s = start_timeout_s
        self.ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of each server, in shard order."""
        return [(self.host, p) for p in self.ports]

    @property
    def pids(self) -> list[int]:
        """The pid of each server, in shard order."""
        return [proc.pid for proc in self._procs]

    def start(self) -> list[tuple[str, int]]:
        """Start every server and wait until each answers PING; return their addresses.

        Raises ``StorageError`` when redis-server is not installed, or a server exits or
        stays silent for ``start_timeout_s`` (the message holds the end of its log).
        """
        exe = redis_server_path()
        if exe is None:
            raise StorageError("redis-server is not installed (not on PATH): install it (apt-get install "
                               "redis-server), or choose another --gcs-storage (sqlite, memory)",
                               kind="missing", backend="redis")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        previous = self._read_state()
        try:
            for i in range(self.count):
                old = previous[i] if i < len(previous) else {}
                _wait_gone(int(old.get("pid", 0)), self.start_timeout_s)
                port = int(old.get("port", 0))
                self.ports.append(port if port and _port_free(self.host, port) else _free_port(self.host))
                self._procs.append(self._spawn(exe, i))
            for i in range(self.count):
                self._wait_ready(exe, i)
        except BaseException:
            self.stop()
            raise
        self._write_state()
        logger.info("started %d Redis servers for the GCS: %s (data in %s)", self.count,
                    ", ".join(f"{h}:{p}" for h, p in self.addresses), self.data_dir)
        return self.addresses

    def revive(self, index: int) -> bool:
        """Start server ``index`` again (same port, same files) if it exited; True if it did.

        Called by the storage when a server stops answering; a server that still runs is
        left alone (it may be busy or restarting by itself). A server started again here
        dies with the thread that calls this (``PR_SET_PDEATHSIG`` is per thread): the
        storage's writer thread, which lives as long as the GCS's storage.
        """
        with self._lock:
            if self._stopped or index >= len(self._procs) or self._procs[index].poll() is None:
                return False
            code = self._procs[index].returncode
            exe = redis_server_path()
            if exe is None or not _port_free(self.host, self.ports[index]):
                return False
            logger.warning("Redis server %d (port %d) exited with code %s; starting it again from %s",
                           index, self.ports[index], code, self._dir(index))
            self._procs[index] = self._spawn(exe, index)
            self._write_state()
            return True

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every server (each saves its file), SIGKILL after ``grace``; return when all are gone."""
        with self._lock:
            self._stopped = True
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                logger.warning("Redis server pid %d did not stop within %g s; killing it", proc.pid, grace)
                proc.kill()
                proc.wait()

    def __repr__(self) -> str:
        return f"<LocalRedisServers {self.count} in {self.data_dir} ports={self.ports}>"

    def _dir(self, i: int) -> pathlib.Path:
        return self.data_dir / f"shard-{i}"

    def _spawn(self, exe: str, i: int) -> subprocess.Popen[bytes]:
        data = self._dir(i)
        data.mkdir(parents=True, exist_ok=True)
        log_path = data / "redis.log"
        args = [exe, "--port", str(self.ports[i]), "--bind", self.host, "--dir", str(data),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--daemonize", "no", "--logfile", str(log_path)]
        with open(log_path, "ab") as log:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=data, start_new_session=True, close_fds=True,
                                    preexec_fn=_die_with_parent(os.getpid()))

    def _wait_ready(self, exe: str, i: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        tries = 0
        while True:
            code = self._procs[i].poll()
            if code is not None:
                tail = _tail(self._dir(i) / "redis.log")
                if "Address already in use" in tail and tries < 3:  # lost the race for a free port
                    tries += 1
                    self.ports[i] = _free_port(self.host)
                    self._procs[i] = self._spawn(exe, i)
                    continue
                raise StorageError(f"redis-server {i} (port {self.ports[i]}) exited with code {code} at "
                                   f"start; the end of its log:\n{tail}", kind="start", backend="redis")
            client = redis.Redis(host=self.host, port=self.ports[i], socket_timeout=1.0,
                                 socket_connect_timeout=0.5)
            try:
                if client.ping():
                    return
            except redis.RedisError:  # not listening yet, or still loading its file
                pass
            finally:
                client.close()
            if time.monotonic() > deadline:
                raise StorageError(f"redis-server {i} (port {self.ports[i]}) did not answer within "
                                   f"{self.start_timeout_s:g} s; the end of its log:\n"
                                   f"{_tail(self._dir(i) / 'redis.log')}", kind="start", backend="redis")
            time.sleep(0.02)

    def _read_state(self) -> list[dict[str, int]]:
        try:
            state = json.loads((self.data_dir / "servers.json").read_text())
            return [dict(s) for s in state["servers"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def _write_state(self) -> None:
        state = {"servers": [{"port": port, "pid": proc.pid} for port, proc in zip(self.ports, self._procs,
                                                                                     strict=True)]}
        tmp = self.data_dir / "servers.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.data_dir / "servers.json")


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when the thread of ``parent`` that forked it ends."""
    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: nobody would stop this server
            os._exit(1)
    return preexec


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait for a redis-server left by a GCS before this one (pid from servers.json) to exit."""
    if pid <= 0:
        return
    try:
        proc = psutil.Process(pid)
        if "redis" not in proc.name():
            return  # the pid was reused by something else
        deadline = time.monotonic() + timeout
        # A zombie has exited (its files are closed); whoever adopted it may reap it late.
        while proc.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                raise psutil.TimeoutExpired(timeout, pid)
            time.sleep(0.01)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        logger.warning("Redis server pid %d of an earlier GCS is still running after %g s; stopping it",
                       pid, timeout)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
            try:
                proc.wait(10)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis binds: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: pathlib.Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
