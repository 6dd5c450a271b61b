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
from runtime.cluster.head import Head, HeadOptions
from runtime.cluster.process import ProcessHandle, stop_pid
from runtime.cluster.restarts import RestartCounts, RestartPolicy
from runtime.cluster.supervision import LOG_FILE, Supervisor, read_status
from runtime.exceptions import ConfigError
from runtime.rpc import security


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

    The head supervises its GCS and replicas (``runtime.cluster.supervision``): a GCS
    that dies is started again on the same address with the same storage, a replica
    under the same name. Without ``detach`` a thread of this process supervises them;
    with it, a head process (``python -m runtime.gcs.supervisor``) starts and supervises
    them and outlives this one. ``restarts`` counts the restarts so far.

    ``gcs_storage`` is where the GCS keeps its tables: ``"sqlite"`` (SQLite in the session
    directory, the default), ``"sqlite:///path/gcs.db"``, ``"redis://h:p,h:p"`` (one shard
    per Redis server) or ``"memory"`` (forgets everything when it dies); ``redis_shards``
    makes the GCS start and own that many local ``redis-server`` processes. None leaves
    each to its setting (``CELLRAY_GCS_STORAGE``, ``CELLRAY_REDIS_SHARDS``); a bad value
    raises ``ConfigError`` here, before anything starts.

    ``LocalCluster.attach(address, ...)`` makes one for a head that is already running,
    to add node managers to it (``cellray start --address``).

    ``global_schedulers`` replicas (``gs-0``, ``gs-1``, ...; default
    ``settings.global_schedulers``, 2) start right after the GCS and stop after the nodes,
    before the GCS. Their pids go to processes.json under ``"schedulers"``.

    ``tls=True`` makes the cluster's CA and certificates in ``session_dir/tls`` and runs
    every channel of the cluster over mutual TLS (``runtime._tls``); ``bundle`` is then the
    join bundle to hand to other machines, and this process's own clients use TLS until
    ``stop()``. ``host`` other than a loopback address needs TLS (``tls=True``, or a
    ``settings.tls_dir``) or ``insecure=True``, which prints a warning once; otherwise
    ``InsecureBindError`` (a ``PermissionError``) is raised here, before anything starts.
    """

    def __init__(self, nodes: list[NodeSpec] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, settings: config.Settings | None = None,
                 session_root: pathlib.Path | None = None, detach: bool = False,
                 env: dict[str, str] | None = None, global_schedulers: int | None = None,
                 gcs_storage: str | None = None, redis_shards: int | None = None,
                 restart_policy: RestartPolicy | None = None, tls: bool = False,
                 insecure: bool = False) -> None:
        self.node_specs = nodes if nodes is not None else [NodeSpec()]
        self.host = host
        self.port = port
        self.settings = (settings or config.load()).override(
            gcs_storage=gcs_storage, redis_shards=redis_shards, insecure=1 if insecure else None)
        #: True when ``start`` makes the cluster's CA (the processes then use TLS).
        self.tls = tls
        security.check_bind(host, port, tls=tls or bool(self.settings.tls_dir),
                            insecure=bool(self.settings.insecure))
        #: The transport this process installed for its own clients (``stop`` removes it).
        self._transport: security.Transport | None = None
        self.session_root = session_root
        self.detach = detach
        self.env = env
        self.restart_policy = restart_policy
        self.session_dir: pathlib.Path | None = None
        self.token_file: pathlib.Path | None = None
        self.address = ""
        self.nodes: list[ProcessHandle] = []
        self.node_info: list[dict[str, Any]] = []
        self.global_schedulers = (self.settings.global_schedulers if global_schedulers is None
                                  else global_schedulers)
        if self.global_schedulers < 0:
            raise ConfigError(f"global_schedulers must be >= 0, got {self.global_schedulers}; "
                              "pass 0 for a cluster without global schedulers",
                              setting="global_schedulers")
        #: The GCS and replicas when they run from this process (not detached).
        self._head: Head | None = None
        self._supervision: Supervisor | None = None
        #: The head process of a detached cluster, and its ready file's info.
        self.supervisor: ProcessHandle | None = None
        self.supervisor_info: dict[str, Any] = {}

    # ---- the head's processes ----

    @property
    def head(self) -> ProcessHandle | None:
        """The GCS's handle when it runs from this process (the running one, after restarts)."""
        return self._head.gcs if self._head is not None else None

    @property
    def schedulers(self) -> list[ProcessHandle]:
        """The replicas' handles when they run from this process (the running ones)."""
        return list(self._head.schedulers.values()) if self._head is not None else []

    @property
    def scheduler_info(self) -> list[dict[str, Any]]:
        """The replicas' ready files (``name``, ``pid``, ``address``), in name order."""
        if self._head is None:
            return list(self.supervisor_info.get("schedulers", []))
        return [self._head.scheduler_info[n] for n in self._head.schedulers
                if n in self._head.scheduler_info]

    @property
    def gcs_pid(self) -> int | None:
        """The pid of the GCS running now (it changes when the GCS is restarted)."""
        if self._head is not None:
            return self._head.gcs.pid if self._head.gcs is not None else None
        rec = registry.read(self.session_dir) if self.session_dir is not None else None
        return rec.head if rec is not None else None

    @property
    def storage(self) -> str:
        """Where the GCS keeps its tables, as it says (``"sqlite:///.../gcs.db"``, ``"memory"``)."""
        info = self._head.gcs_info if self._head is not None else self.supervisor_info
        return str(info.get("storage", ""))

    @property
    def restarts(self) -> RestartCounts:
        """How many times the head restarted the GCS and each replica so far."""
        if self._supervision is not None:
            counts = self._supervision.counts
            return RestartCounts(counts.gcs, dict(counts.schedulers), dict(counts.not_restarted))
        status = read_status(self.session_dir) if self.session_dir is not None else None
        return RestartCounts.decode(json.dumps(status).encode() if status else None)

    def _env(self) -> dict[str, str]:
        """The children's environment: ``env`` (default ours) with every setting as ``CELLRAY_*``.

        Each daemon reads its settings from these (``config.load()``), so a cluster started
        with ``LocalCluster(settings=...)`` or ``rt.init(_settings=...)`` configures them all,
        and the workers that a node starts inherit them.
        """
        env = dict(os.environ if self.env is None else self.env)
        env.update(self.settings.to_env())
        return env

    @property
    def bundle(self) -> pathlib.Path | None:
        """The join bundle of a cluster started with ``tls=True`` (None otherwise)."""
        if not self.tls or self.session_dir is None:
            return None
        from runtime import _tls

        return _tls.bundle_path(_tls.tls_dir_of(self.session_dir))

    def _use_transport(self) -> None:
        """Install the settings' transport for this process's own clients (once), and
        warn on the console when servers bind off loopback in plaintext."""
        if self._transport is None:
            self._transport = security.install(security.from_settings(self.settings))
        if not self._transport.tls:
            security.warn_insecure(self.host)

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
        """Start the head (GCS and replicas), then the nodes; return when every process answers."""
        self.session_dir = _session.new_session_dir(self.session_root)
        self.token_file = _session.write_token(self.session_dir)
        if self.detach:  # detached processes run in /: every path they get is absolute
            self.session_dir, self.token_file = self.session_dir.resolve(), self.token_file.resolve()
        try:
            if self.tls:
                from runtime import _tls  # imports cryptography: only for TLS clusters

                tls_dir = _tls.make_cluster_tls(self.session_dir, self.host,
                                                _session.read_token(self.token_file))
                self.settings = self.settings.override(tls_dir=str(tls_dir.resolve()))
            self._use_transport()
            if self.detach:
                self._start_head_process()
            else:
                self._start_head()
            for spec in self.node_specs:
                self.add_node(spec)
            if self._head is not None:
                # Waited for last so that their start overlaps the nodes'; nodes look for
                # replicas in the GCS at start and on every heartbeat.
                self._head.wait_schedulers()
                assert self.token_file is not None
                self._supervision = Supervisor(self._head, _session.read_token(self.token_file),
                                               policy=self.restart_policy).start()
        except BaseException:
            self.stop()
            raise
        self._record()
        return self

    def _head_options(self) -> HeadOptions:
        assert self.session_dir is not None and self.token_file is not None
        return HeadOptions(session_dir=self.session_dir, token_file=self.token_file,
                           settings=self.settings, host=self.host, port=self.port,
                           global_schedulers=self.global_schedulers, env=self.env, detach=False,
                           parent_pid=os.getpid())

    def _start_head(self) -> None:
        """Start the GCS and the replicas from this process (``start`` waits for the replicas)."""
        self._head = Head(self._head_options())
        self._head.start_gcs()
        self.address = self._head.address
        self._head.start_schedulers()

    def _start_head_process(self) -> None:
        """Start the detached head process, which starts the GCS and the replicas; wait for it."""
        assert self.session_dir is not None and self.token_file is not None
        args = ["--session-dir", str(self.session_dir), "--token-file", str(self.token_file),
                "--host", self.host, "--port", str(self.port),
                "--global-schedulers", str(self.global_schedulers),
                "--gcs-storage", self.settings.gcs_storage]
        if self.settings.redis_shards:
            args += ["--redis-shards", str(self.settings.redis_shards)]
        self.supervisor = ProcessHandle(
            "supervisor", "runtime.gcs.supervisor", args, self.session_dir / "logs" / LOG_FILE,
            self.session_dir / "supervisor.ready", env=self._env(), detach=True)
        # Recorded before waiting: an interrupted starter must not lose a detached pid.
        registry.record_head(self.session_dir, gcs=None, schedulers=None,
                             supervisor=self.supervisor.pid, detached=True)
        # It waits for the GCS, then for the replicas, each within start_timeout_s.
        self.supervisor_info = self.supervisor.wait_ready(2 * self.settings.start_timeout_s)
        self.address = str(self.supervisor_info["address"])

    def add_node(self, spec: NodeSpec, wait: bool = True) -> ProcessHandle:
        """Start one more node manager joined to this cluster's head."""
        assert self.session_dir is not None
        self._use_transport()
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
        """Add the nodes to processes.json (the head records its own processes)."""
        if self.session_dir is None:
            return
        registry.record(self.session_dir, head=None, nodes=[n.pid for n in self.nodes],
                        detached=self.detach)

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
        """Stop the supervision (so nothing is restarted meanwhile), the nodes (each stops its
        workers), the global schedulers, then the GCS. Returns when all are gone.

        Then the session's token and TLS files are removed (its logs stay) when this
        started its head, or when nothing else of the session runs (``attach``)."""
        if self._supervision is not None:
            self._supervision.stop()
            self._supervision = None
        shm_dirs = self._shm_dirs()
        for node in reversed(self.nodes):
            node.stop()
        # A node that was killed could not remove its shared-memory directory: do it here.
        for shm_dir in shm_dirs:
            if shm_dir.startswith("/dev/shm/cellray-"):
                shutil.rmtree(shm_dir, ignore_errors=True)
        if self.supervisor is not None:
            # It stops its replicas and GCS; any left (it was killed) are stopped by pid.
            self.supervisor.stop(grace=3 * self.settings.stop_grace_s + 10.0)
            self._stop_recorded_head()
        if self._head is not None:
            self._head.stop()
        if self.session_dir is not None and (
                self._head is not None or self.supervisor is not None
                or not _session.in_use(self.session_dir, besides=os.getpid())):
            # The cluster is gone, or (attached) nothing of this session runs any more.
            _session.remove_secrets(self.session_dir)
        if self._transport is not None:
            security.uninstall(self._transport)
            self._transport = None

    def _stop_recorded_head(self) -> None:
        """Stop the replicas and the GCS recorded in processes.json that still run."""
        assert self.session_dir is not None
        rec = registry.read(self.session_dir)
        if rec is None:
            return
        for role, pids in (("scheduler", rec.schedulers), ("head", [rec.head] if rec.head else [])):
            for pid in pids:
                if registry.is_cluster_process(pid, self.session_dir, role):
                    stop_pid(pid)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"<LocalCluster address={self.address or '-'} nodes={len(self.nodes)} "
                f"schedulers={self.global_schedulers} gcs_restarts={self.restarts.gcs} "
                f"session={self.session_dir}>")
