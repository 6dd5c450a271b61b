"""The head's processes on one machine: the GCS and the global scheduler replicas.

``Head`` starts them, starts one again when it died (the GCS on the port it had, with
the same storage, so its address never changes; a replica under the same name), records
their pids in the session's processes.json, and stops them: replicas first, then the GCS.
It does not decide *when* to restart: ``runtime.cluster.supervision.Supervisor`` watches
a ``Head`` and does. ``LocalCluster`` holds a ``Head`` for an ``rt.init`` cluster; the
head process of a detached cluster (``python -m runtime.gcs.supervisor``) holds one for
``cellray start --head``.

The GCS gets its storage from the settings: ``--gcs-storage`` (``gcs_storage``: SQLite in
the session directory by default) and, when not 0, ``--redis-shards`` (``redis_shards``);
its restarts get the same, so they find the tables it left.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from dataclasses import dataclass
from typing import Any

from runtime import config
from runtime.cluster import registry
from runtime.cluster.process import ProcessHandle

__all__ = ["GCS_NAME", "Head", "HeadOptions"]

#: The name of the GCS among the head's processes (its log is ``logs/gcs.log``).
GCS_NAME = "gcs"


@dataclass(frozen=True)
class HeadOptions:
    """What the head's processes are started with."""

    session_dir: pathlib.Path
    token_file: pathlib.Path
    settings: config.Settings
    host: str = "127.0.0.1"
    #: The GCS port asked for (0: any free one; the one it got is kept for restarts).
    port: int = 0
    #: Global scheduler replicas, named ``gs-0``, ``gs-1``, ...
    global_schedulers: int = 2
    #: The children's environment (None: this process's).
    env: dict[str, str] | None = None
    #: True when the processes outlive the one that starts them (``cellray start``).
    detach: bool = False
    #: Every child exits when this process does (``--parent-pid``); None for detached ones.
    parent_pid: int | None = None
    #: The replicas exit when this process is gone (``--head-pid``: the head process).
    head_pid: int | None = None


class Head:
    """The GCS and the global scheduler replicas of one session, as ``ProcessHandle`` s."""

    def __init__(self, options: HeadOptions) -> None:
        self.options = options
        #: The GCS's handle (a new one after each restart); None before ``start_gcs``.
        self.gcs: ProcessHandle | None = None
        #: The replicas' handles by name, in start order.
        self.schedulers: dict[str, ProcessHandle] = {}
        #: The ready files' contents: the GCS's and each replica's, latest start.
        self.gcs_info: dict[str, Any] = {}
        self.scheduler_info: dict[str, dict[str, Any]] = {}
        #: The GCS's bound port (known once it is ready; restarts bind the same).
        self.port = options.port
        self.address = ""
        #: The supervising process's pid, recorded in processes.json (None: none runs apart).
        self.supervisor_pid: int | None = None

    # ---- arguments ----

    def _env(self) -> dict[str, str]:
        env = dict(os.environ if self.options.env is None else self.options.env)
        env.update(self.options.settings.to_env())
        return env

    def _common(self) -> list[str]:
        o = self.options
        args = ["--session-dir", str(o.session_dir), "--token-file", str(o.token_file)]
        if o.parent_pid is not None:
            args += ["--parent-pid", str(o.parent_pid)]
        return args

    def gcs_args(self) -> list[str]:
        """The GCS's flags: the bound port once known, so a restarted GCS has the same address."""
        o, s = self.options, self.options.settings
        args = ["--host", o.host, "--port", str(self.port), "--num-shards", str(s.gcs_shards),
                "--heartbeat-ms", str(s.heartbeat_ms), "--node-timeout-ms", str(s.node_timeout_ms)]
        args += ["--gcs-storage", s.gcs_storage]
        if s.redis_shards:
            args += ["--redis-shards", str(s.redis_shards)]
        return [*args, *self._common()]

    def scheduler_args(self, name: str) -> list[str]:
        """The flags of the replica ``name``."""
        args = ["--gcs-address", self.address, "--host", self.options.host, "--name", name]
        if self.options.head_pid is not None:
            args += ["--head-pid", str(self.options.head_pid)]
        return [*args, *self._common()]

    @property
    def scheduler_names(self) -> list[str]:
        return [f"gs-{i}" for i in range(self.options.global_schedulers)]

    # ---- starting ----

    def _spawn(self, name: str, module: str, args: list[str]) -> ProcessHandle:
        d = self.options.session_dir
        ready = d / f"{name}.ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()  # a restart's readiness is its own ready file, not the last one's
        return ProcessHandle(name, module, args, d / "logs" / f"{name}.log", ready,
                             env=self._env(), detach=self.options.detach)

    def spawn_gcs(self) -> ProcessHandle:
        """Start the GCS (again) without waiting; ``gcs_ready`` takes its ready file's info."""
        self.gcs = self._spawn(GCS_NAME, "runtime.gcs", self.gcs_args())
        self.record()
        return self.gcs

    def gcs_ready(self, info: dict[str, Any]) -> None:
        """The GCS reported ``info`` (its ready file): keep its port and address."""
        self.gcs_info = info
        self.port = int(info["port"])
        self.address = f"{self.options.host}:{self.port}"

    def start_gcs(self) -> dict[str, Any]:
        """Start the GCS and wait until it serves; raises ``ClusterStartError`` when it cannot."""
        handle = self.spawn_gcs()
        self.gcs_ready(handle.wait_ready(self.options.settings.start_timeout_s))
        return self.gcs_info

    def spawn_scheduler(self, name: str) -> ProcessHandle:
        """Start the replica ``name`` (again) without waiting (needs the GCS's address)."""
        assert self.address, "the GCS must be ready before its replicas start"
        handle = self._spawn(name, "runtime.scheduler", self.scheduler_args(name))
        self.schedulers[name] = handle
        self.record()
        return handle

    def start_schedulers(self) -> None:
        """Start every replica without waiting (``wait_schedulers`` waits)."""
        for name in self.scheduler_names:
            self.spawn_scheduler(name)

    def wait_schedulers(self) -> list[dict[str, Any]]:
        """Wait until every replica is ready; their ready files' info, in name order."""
        timeout = self.options.settings.start_timeout_s
        for name, handle in self.schedulers.items():
            self.scheduler_info[name] = handle.wait_ready(timeout)
        return [self.scheduler_info[name] for name in self.schedulers]

    # ---- bookkeeping and stop ----

    def pids(self) -> list[int]:
        """The pids of the processes running now: replicas, then the GCS."""
        handles = [*self.schedulers.values(), *([self.gcs] if self.gcs is not None else [])]
        return [h.pid for h in handles if h.alive()]

    def record(self) -> None:
        """Write the current pids (GCS, replicas, supervisor) to the session's processes.json."""
        registry.record_head(self.options.session_dir,
                             gcs=self.gcs.pid if self.gcs is not None else None,
                             schedulers=[h.pid for h in self.schedulers.values()],
                             supervisor=self.supervisor_pid, detached=self.options.detach)

    def stop(self) -> None:
        """Stop the replicas (all at once), then the GCS; returns when all are gone."""
        for handle in self.schedulers.values():
            handle.request_stop()
        for handle in reversed(list(self.schedulers.values())):
            handle.stop()
        if self.gcs is not None:
            self.gcs.stop()

    def __repr__(self) -> str:
        gcs = f"pid {self.gcs.pid}" if self.gcs is not None else "not started"
        return f"<Head {self.address or '-'} GCS {gcs}, {len(self.schedulers)} replica(s)>"
