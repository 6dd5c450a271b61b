"""LocalCluster: a head (GCS) and node managers as processes on this machine.

The one way clusters start: ``rt.init()`` uses it, ``cellray start`` uses it, tests use it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from dataclasses import dataclass, field
from typing import Any

from runtime import _session, config
from runtime.cluster import registry
from runtime.cluster.process import ProcessHandle
from runtime.exceptions import ConfigError


@dataclass
class NodeSpec:
    """What one node offers."""

    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int | None = None
    prestart: int | None = None


class LocalCluster:
    """A GCS process, ``global_schedulers`` global scheduler replicas and ``len(nodes)`` node managers.

    ``detach=False`` (as ``rt.init`` uses it): every process exits when this Python
    process does. ``detach=True`` (``cellray start``): they outlive it until ``cellray stop``.
    The pids go to the session's processes.json (see ``runtime.cluster.registry``).

    ``LocalCluster.attach(address, ...)`` makes one for a head that is already running,
    to add node managers to it (``cellray start --address``).

    ``global_schedulers`` replicas (``gs-0``, ``gs-1``, ...; default
    ``settings.global_schedulers``, 2) start right after the head and stop after the nodes,
    before the head; they also exit on their own once the head is gone (``--head-pid``),
    which is how a detached cluster's replicas stop with ``cellray stop``. Their pids go to
    processes.json under ``"schedulers"``.
    """

    def __init__(self, nodes: list[NodeSpec] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, settings: config.Settings | None = None,
                 session_root: pathlib.Path | None = None, detach: bool = False,
                 env: dict[str, str] | None = None, global_schedulers: int | None = None) -> None:
        self.node_specs = nodes if nodes is not None else [NodeSpec()]
        self.host = host
        self.port = port
        self.settings = settings or config.load()
        self.session_root = session_root
        self.detach = detach
        self.env = env
        self.session_dir: pathlib.Path | None = None
        self.token_file: pathlib.Path | None = None
        self.address = ""
        self.head: ProcessHandle | None = None
        self.nodes: list[ProcessHandle] = []
        self.node_info: list[dict[str, Any]] = []
        self.global_schedulers = (self.settings.global_schedulers if global_schedulers is None
                                  else global_schedulers)
        if self.global_schedulers < 0:
            raise ConfigError(f"global_schedulers must be >= 0, got {self.global_schedulers}; "
                              "pass 0 for a cluster without global schedulers",
                              setting="global_schedulers")
        self.schedulers: list[ProcessHandle] = []
        self.scheduler_info: list[dict[str, Any]] = []

    def _env(self) -> dict[str, str]:
        """The children's environment: ``env`` (default ours) with every setting as ``CELLRAY_*``.

        Each daemon reads its settings from these (``config.load()``), so a cluster started
        with ``LocalCluster(settings=...)`` or ``rt.init(_settings=...)`` configures them all,
        and the workers that a node starts inherit them.
        """
        env = dict(os.environ if self.env is None else self.env)
        env.update(self.settings.to_env())
        return env

    def _common(self) -> list[str]:
        assert self.session_dir is not None and self.token_file is not None
        args = ["--session-dir", str(self.session_dir), "--token-file", str(self.token_file)]
        if not self.detach:
            args += ["--parent-pid", str(os.getpid())]
        return args

    @classmethod
    def attach(cls, address: str, *, token_file: pathlib.Path, session_dir: pathlib.Path,
               host: str = "127.0.0.1", settings: config.Settings | None = None,
               detach: bool = False, env: dict[str, str] | None = None) -> LocalCluster:
        """A cluster whose head (GCS) runs already, at ``address``; ``add_node`` joins nodes to it.

        Nothing starts until ``add_node``. The nodes log to ``session_dir/logs`` (as
        ``node-<i>.log``, after any nodes already there) and are added to its
        processes.json; ``stop()`` stops only the nodes added through this object.
        ``token_file`` must be an absolute path when ``detach`` (detached processes run in /).

        Examples
        --------
        >>> c = LocalCluster.attach("127.0.0.1:6380", token_file=tok, session_dir=d)  # doctest: +SKIP
        >>> c.add_node(NodeSpec(num_cpus=4))                                          # doctest: +SKIP
        """
        cluster = cls([], host=host, settings=settings, detach=detach, env=env)
        cluster.address = address
        cluster.token_file = token_file
        cluster.session_dir = session_dir
        (session_dir / "logs").mkdir(parents=True, exist_ok=True)
        return cluster

    def start(self) -> LocalCluster:
        """Start the head, the global schedulers, then the nodes; return when every process answers."""
        self.session_dir = _session.new_session_dir(self.session_root)
        self.token_file = _session.write_token(self.session_dir)
        logs = self.session_dir / "logs"
        try:
            self.head = ProcessHandle(
                "gcs", "runtime.gcs",
                ["--host", self.host, "--port", str(self.port),
                 "--num-shards", str(self.settings.gcs_shards),
                 "--heartbeat-ms", str(self.settings.heartbeat_ms),
                 "--node-timeout-ms", str(self.settings.node_timeout_ms), *self._common()],
                logs / "gcs.log", self.session_dir / "gcs.ready", env=self._env(),
                detach=self.detach)
            info = self.head.wait_ready(self.settings.start_timeout_s)
            self.address = f"{self.host}:{info['port']}"
            self._start_schedulers()
            for spec in self.node_specs:
                self.add_node(spec)
            # Waited for last so that their start overlaps the nodes'; nodes look for
            # replicas in the GCS at start and on every heartbeat.
            self.scheduler_info = [s.wait_ready(self.settings.start_timeout_s) for s in self.schedulers]
        except BaseException:
            self.stop()
            raise
        self._record()
        return self

    def _start_schedulers(self) -> None:
        """Start the global scheduler replicas (``start`` waits for them after the nodes)."""
        assert self.session_dir is not None and self.head is not None
        for i in range(self.global_schedulers):
            name = f"gs-{i}"
            self.schedulers.append(ProcessHandle(
                name, "runtime.scheduler",
                ["--gcs-address", self.address, "--host", self.host, "--name", name,
                 "--head-pid", str(self.head.pid), *self._common()],
                self.session_dir / "logs" / f"{name}.log", self.session_dir / f"{name}.ready",
                env=self._env(), detach=self.detach))
        self._record()

    def add_node(self, spec: NodeSpec, wait: bool = True) -> ProcessHandle:
        """Start one more node manager joined to this cluster's head."""
        assert self.session_dir is not None
        name = self._claim_node_name()
        args = ["--gcs-address", self.address, "--host", self.host, *self._common()]
        if spec.num_cpus is not None:
            args += ["--num-cpus", str(spec.num_cpus)]
        if spec.num_gpus is not None:
            args += ["--num-gpus", str(spec.num_gpus)]
        if spec.resources:
            args += ["--resources", json.dumps(spec.resources)]
        if spec.object_store_memory:
            args += ["--object-store-memory", str(int(spec.object_store_memory))]
        if spec.prestart is not None:
            args += ["--prestart", str(spec.prestart)]
        handle = ProcessHandle(name, "runtime.node", args,
                               self.session_dir / "logs" / f"{name}.log",
                               self.session_dir / f"{name}.ready", env=self._env(),
                               detach=self.detach)
        self.nodes.append(handle)
        self._record()  # before waiting: an interrupted starter must not lose a detached pid
        if wait:
            self.node_info.append(handle.wait_ready(self.settings.start_timeout_s))
        return handle

    def _claim_node_name(self) -> str:
        """``node-<i>`` for the first ``i`` whose log file this call creates.

        Other processes may add nodes to the same session (``cellray start --address``),
        so the name is claimed by creating its log exclusively.
        """
        assert self.session_dir is not None
        i = len(self.nodes)
        while True:
            try:
                fd = os.open(self.session_dir / "logs" / f"node-{i}.log",
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                i += 1
                continue
            os.close(fd)
            return f"node-{i}"

    def _record(self) -> None:
        if self.session_dir is None:
            return
        registry.record(self.session_dir, head=self.head.pid if self.head else None,
                        nodes=[n.pid for n in self.nodes], detached=self.detach)
        if self.schedulers:
            self._record_schedulers()

    def _record_schedulers(self) -> None:
        """Add ``"schedulers": [pids]`` to processes.json, under the registry's lock.

        ``registry.record`` rewrites the file with the keys it knows, so this runs after it.
        """
        assert self.session_dir is not None
        path = self.session_dir / registry.PROCESSES_FILE
        with registry._locked(self.session_dir):
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError):
                raw = {}
            raw["schedulers"] = [s.pid for s in self.schedulers]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(raw))
            os.replace(tmp, path)

    def _shm_dirs(self) -> set[str]:
        """The nodes' shared-memory directories: each node's first, and the one it has now
        (a node that was fenced and rejoined as a new node wrote its ready file again)."""
        dirs = {str(info.get("shm_dir") or "") for info in self.node_info}
        for node in self.nodes:
            try:
                if node.ready_path is not None:
                    dirs.add(str(json.loads(node.ready_path.read_text()).get("shm_dir") or ""))
            except (OSError, ValueError):
                continue
        return dirs - {""}

    def stop(self) -> None:
        """Stop the nodes (each stops its workers), the global schedulers, then the head.
        Returns when all are gone."""
        shm_dirs = self._shm_dirs()
        for node in reversed(self.nodes):
            node.stop()
        # A node that was killed could not remove its shared-memory directory: do it here.
        for shm_dir in shm_dirs:
            if shm_dir.startswith("/dev/shm/cellray-"):
                shutil.rmtree(shm_dir, ignore_errors=True)
        for scheduler in reversed(self.schedulers):
            scheduler.stop()
        if self.head is not None:
            self.head.stop()
            if self.session_dir is not None:
                _session.remove_secrets(self.session_dir)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"<LocalCluster address={self.address or '-'} nodes={len(self.nodes)} "
                f"schedulers={len(self.schedulers)} "
                f"session={self.session_dir}>")
