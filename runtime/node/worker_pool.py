"""Starting, watching and stopping worker processes for one node.

Workers are ``python -m runtime.worker`` children in the node's process group, each with
its own log in the session's logs/ directory. The pool learns of an exit from the
process itself (``asyncio`` child watching, no polling) and reports it with the exit code.

The node manager sees a pool only through the small ``Pool`` protocol (start, stop, kill,
stop_all), so tests inject a pool of fake workers; ``Launcher`` is what carries out the
state's StartWorker/KillWorker/StopWorker actions on whichever pool it was given.

A worker for a runtime env is started once its packages are unpacked on this node
(``runtime_envs.RuntimeEnvs``): in its working directory, with its ``env_vars`` and its
paths on ``PYTHONPATH``; the rest of its env reaches it in a file (``--runtime-env-file``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from runtime import _ids, _packages
from runtime.node.runtime_envs import RuntimeEnvs

logger = logging.getLogger(__name__)


class Pool(Protocol):
    """What the node needs of a worker pool. Exits are reported by the pool's own callback."""

    async def start(self, worker_id: bytes, *, runtime_env: str = "") -> bytes:
        """Start worker ``worker_id``; return once it is launched (it connects back later).
        ``runtime_env``: the JSON of the runtime env it is for (given only when there is
        one, so a pool that never runs envs may leave the keyword out)."""
        ...

    def stop(self, worker_id: bytes) -> None:
        """SIGTERM an idle worker the node no longer needs."""
        ...

    def kill(self, worker_id: bytes) -> None:
        """SIGKILL a worker; its exit is then reported like any other."""
        ...

    async def stop_all(self) -> None:
        """Stop every worker (the node is stopping); exits are no longer reported."""
        ...


class Starting(Protocol):
    """Tells the state about a worker being started (``WorkerTable.started``)."""

    def __call__(self, worker_id: bytes, counted: bool = True, env_key: str = "") -> None: ...


class Launcher:
    """Carries out the state's worker actions on a ``Pool``.

    ``starting(worker_id, counted, env_key)`` tells the state about a worker being started
    before the process exists, so the worker's Hello always finds it; ``counted`` is True
    when the state asked for it (a StartWorker action) and so already counts it as
    starting; ``env_key`` is the runtime env it is for.
    """

    def __init__(self, pool: Pool, starting: Starting) -> None:
        self.pool = pool
        self._starting = starting
        self._pending: set[asyncio.Task[Any]] = set()

    def start_worker(self, counted: bool = True, env_key: str = "", runtime_env: str = "") -> None:
        worker_id = _ids.new_id()
        if env_key:
            self._starting(worker_id, counted, env_key)
            launch = self.pool.start(worker_id, runtime_env=runtime_env)
        else:
            self._starting(worker_id, counted)
            launch = self.pool.start(worker_id)
        t = asyncio.get_running_loop().create_task(launch)
        self._pending.add(t)
        t.add_done_callback(self._started)

    def _started(self, t: asyncio.Task[Any]) -> None:
        self._pending.discard(t)
        if not t.cancelled() and t.exception() is not None:
            logger.error("could not start a worker: %s", t.exception())

    def kill(self, worker_id: bytes) -> None:
        self.pool.kill(worker_id)

    def stop(self, worker_id: bytes) -> None:
        self.pool.stop(worker_id)

    async def stop_all(self) -> None:
        await self.pool.stop_all()


class WorkerPool:
    """Spawns workers that connect back to this node's Session service.

    ``stop_grace_s`` is how long ``stop_all`` lets workers exit after SIGTERM
    (``Settings.worker_stop_grace_s``). ``gcs`` is where packages of runtime envs come
    from; without it the pool starts plain workers only.
    """

    def __init__(self, *, node_address: str, gcs_address: str, token_file: str,
                 session_dir: Path, node_id: bytes,
                 on_exit: Callable[[bytes, int | None], None], stop_grace_s: float,
                 gcs: _packages.Kv | None = None) -> None:
        self.node_address = node_address
        self.gcs_address = gcs_address
        # Absolute: a worker of a runtime env starts in another directory.
        self.token_file = os.path.abspath(token_file)
        self.session_dir = session_dir.absolute()
        #: Sets up runtime envs for workers (None: this pool starts plain workers only).
        self.runtime_envs = (RuntimeEnvs(gcs, self.session_dir / "runtime_envs" / node_id.hex()[:12])
                             if gcs is not None else None)
        self.node_id = node_id
        self.on_exit = on_exit
        self.stop_grace_s = stop_grace_s
        self.procs: dict[bytes, asyncio.subprocess.Process] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self, worker_id: bytes | None = None, env: dict[str, str] | None = None,
                    runtime_env: str = "") -> bytes:
        """Start one worker; returns its id at once (it connects back when ready). Nothing
        starts once ``stop_all`` began (a worker started then would outlive the node).

        ``runtime_env`` (an env's JSON) starts it in that runtime env, once its packages
        are unpacked here; a worker whose env could not be set up is started all the
        same, and fails each task it gets with the reason (``RuntimeEnvSetupError``).
        """
        worker_id = worker_id or _ids.new_id()
        if self._closing:
            return worker_id
        log_path = self.session_dir / "logs" / f"worker-{worker_id.hex()[:12]}.log"
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        cmd = [sys.executable, "-m", "runtime.worker", "--node-address", self.node_address,
               "--gcs-address", self.gcs_address, "--token-file", self.token_file,
               "--worker-id", worker_id.hex(), "--node-id", self.node_id.hex(),
               "--session-dir", str(self.session_dir)]
        cwd: str | None = None
        if runtime_env:
            if self.runtime_envs is None:
                raise RuntimeError("this worker pool was made without a GCS client, so it cannot "
                                   "start a worker for a runtime env")
            setup = await self.runtime_envs.setup(runtime_env)
            if self._closing:
                return worker_id
            cwd = setup.cwd
            full_env.update(setup.environ(full_env))
            cmd += ["--runtime-env-file", setup.spec_file]
        with open(log_path, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=full_env, cwd=cwd)
        self.procs[worker_id] = proc
        watcher = asyncio.get_running_loop().create_task(self._watch(worker_id, proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        logger.debug("started worker %s pid %d", _ids.short(worker_id), proc.pid)
        return worker_id

    async def _watch(self, worker_id: bytes, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.procs.pop(worker_id, None)
        if not self._closing:
            logger.info("worker %s pid %d exited with code %s", _ids.short(worker_id), proc.pid, code)
            self.on_exit(worker_id, code)

    def pid_of(self, worker_id: bytes) -> int:
        proc = self.procs.get(worker_id)
        return proc.pid if proc is not None else 0

    def stop(self, worker_id: bytes) -> None:
        """SIGTERM one idle worker the node no longer needs (its exit is then expected)."""
        proc = self.procs.pop(worker_id, None)
        if proc is not None and proc.returncode is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)  # not proc.send_signal(): see kill()
            except ProcessLookupError:
                pass

    def kill(self, worker_id: bytes) -> None:
        """SIGKILL one worker (force-cancel, or a worker whose stream broke)."""
        proc = self.procs.get(worker_id)
        if proc is not None and proc.returncode is None:
            try:
                # Not proc.send_signal(): its poll() can reap a worker that just died before
                # asyncio's child watcher sees its status (then reported as 255).
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def stop_all(self, grace: float | None = None) -> None:
        """SIGTERM every worker, wait up to ``grace`` seconds (default: the pool's
        ``stop_grace_s``), SIGKILL the rest."""
        grace = self.stop_grace_s if grace is None else grace
        self._closing = True
        procs = [p for p in self.procs.values() if p.returncode is None]
        for p in procs:
            try:
                os.kill(p.pid, signal.SIGTERM)  # not p.send_signal(): see kill()
            except ProcessLookupError:
                pass
        if procs:
            _, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs],
                                            timeout=grace)
            for p in procs:
                if p.returncode is None:
                    try:
                        os.kill(p.pid, signal.SIGKILL)  # not p.kill(): see kill()
                    except ProcessLookupError:
                        pass
            if pending:
                await asyncio.wait(pending, timeout=grace)
        for w in list(self._watchers):
            w.cancel()
