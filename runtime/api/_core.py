"""The public functions: init, shutdown, get, put, wait, cancel, nodes, resources, context."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

from runtime import _ids, _session, config
from runtime.api import _context, _runtime_env
from runtime.api._client import CoreClient
from runtime.api._generator import ObjectRefGenerator
from runtime.api._object_ref import ObjectRef
from runtime.api._raising import callers_frames_only
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.exceptions import (
    AlreadyInitializedError,
    ConnectionLostError,
    NoLiveNodeError,
    UnauthenticatedError,
)
from runtime.gcs.client import GcsClient
from runtime.protocol import codec, gcs_pb2
from runtime.rpc import security

logger = logging.getLogger(__name__)

_cluster: LocalCluster | None = None
_in_progress = threading.local()
_info: ClusterInfo | None = None


@dataclass(frozen=True)
class ClusterInfo:
    """What ``init`` connected to."""

    #: GCS address, ``host:port``; pass it to ``init(address=...)`` from another process.
    address: str
    #: The cluster's session directory (logs, token).
    session_dir: str
    #: The token file to pass as ``init(token_file=...)`` from another machine.
    token_file: str
    #: Hex id of the node this driver talks to.
    node_id: str
    #: Hex id of this driver's job.
    job_id: str
    #: True when this process started the cluster (``shutdown`` stops it).
    started_here: bool

    @property
    def address_info(self) -> dict[str, str]:
        """Ray-style summary."""
        return {"address": self.address, "gcs_address": self.address,
                "session_dir": self.session_dir, "node_id": self.node_id}

    def __repr__(self) -> str:
        how = "started here" if self.started_here else "attached"
        return f"<cellray cluster {self.address} ({how}), node {self.node_id[:12]}, job {self.job_id}>"


def is_initialized() -> bool:
    """True when ``init`` has connected this process to a cluster."""
    return _context.peek() is not None


def init(address: str | None = None, *, num_cpus: float | None = None,
         num_gpus: float | None = None, resources: dict[str, float] | None = None,
         object_store_memory: int | None = None, token_file: str | None = None,
         ignore_reinit_error: bool = False, num_nodes: int = 1,
         log_to_driver: bool = True, gcs_storage: str | None = None,
         namespace: str | None = None, runtime_env: dict[str, Any] | None = None,
         bundle: str | None = None, _settings: config.Settings | None = None) -> ClusterInfo:
    """Start a local cluster, or attach to a running one, and connect this process to it.

    Parameters
    ----------
    address : str, optional
        ``"host:port"`` of a running cluster's GCS, or ``"auto"`` for the newest cluster
        on this machine. None (the default) starts a new local cluster, unless the
        ``CELLRAY_ADDRESS`` environment variable names one.
    num_cpus, num_gpus, resources, object_store_memory
        What the local cluster's node offers (only when starting one). GPUs are logical.
    token_file : str, optional
        The cluster token when attaching; found in the session directory when the
        cluster runs on this machine.
    bundle : str, optional
        Instead of ``token_file``: the join bundle ``cellray start --head --tls`` printed,
        to attach from another machine; this process's channels then use mutual TLS until
        ``shutdown`` (on the head's machine its TLS files are found like the token).
    ignore_reinit_error : bool
        Return the current connection instead of raising when already initialized.
    num_nodes : int
        Node managers to start for a local cluster.
    gcs_storage : str, optional
        Where the new local cluster's GCS keeps its tables: ``"sqlite"`` (a file in the
        session directory, the default), ``"sqlite:///abs/path.db"``, ``"redis://host:port,..."``
        (one shard per Redis server) or ``"memory"`` (lost when the GCS dies). The head
        restarts a GCS that dies, from this storage, on the same address; with
        ``"memory"`` that is a new, empty cluster. ``runtime.state.get_head()`` shows it.
        Only when starting a cluster: one being attached to chose its storage already.
    namespace : str, optional
        The namespace of this job: named actors it creates live in it, and ``get_actor``
        looks there by default. None: an anonymous namespace of its own, as in Ray (other
        jobs reach its named actors only with ``namespace=`` given explicitly).
    runtime_env : dict, optional
        The default runtime environment of this job's tasks and actors (Ray's keys):
        ``working_dir`` (a local directory, e.g. ``"."``: packaged once, unpacked on each
        node that needs it, the workers' current directory and first on ``sys.path``, so
        your local modules import and relative paths read), ``py_modules`` (package
        directories, ``.py`` files or imported modules put on ``sys.path``), ``env_vars``
        (``{str: str}``, set before any of your code runs) and ``excludes`` (gitignore
        patterns left out, besides ``.git`` and ``__pycache__``). A package holds at most
        100 MiB of files. ``@remote(runtime_env=...)`` and ``.options(runtime_env=...)``
        merge into it: their ``working_dir``/``py_modules`` replace it, their ``env_vars``
        are added. Tasks submitted from a task inherit its env. Workers run one env only.

    Raises
    ------
    AlreadyInitializedError
        When already initialized (unless ``ignore_reinit_error``); a ``RuntimeError``.
    ConnectionLostError
        When the cluster at ``address`` does not answer, or ``"auto"`` finds none;
        ``NoLiveNodeError`` when it has no live node. Both are ``ConnectionError``.
    UnauthenticatedError
        When the token is missing or wrong; a ``PermissionError``.
    TokenFileError
        When ``token_file`` does not exist; a ``FileNotFoundError``.
    ConfigError
        When a ``CELLRAY_*`` variable does not parse or is out of range, ``bundle`` is no
        valid join bundle, or ``gcs_storage``
        is not one of the forms above; a ``ValueError``. ``gcs_storage`` together with
        ``address`` raises a ``ValueError`` too. A ``runtime_env`` with a key other than
        working_dir, py_modules, env_vars, excludes, or a package over 100 MiB, raises a
        ``ValueError``; a type error in it a ``TypeError``.
    FileNotFoundError, NotADirectoryError
        When ``runtime_env``'s ``working_dir`` or a ``py_modules`` path does not exist or
        is no directory (nothing is started then).
    ClusterStartError
        When a process of the new local cluster dies or stays silent at start (its log's
        end is in the message); a ``RuntimeError``.

    Examples
    --------
    >>> import runtime as rt
    >>> rt.init(num_cpus=2)            # doctest: +SKIP
    >>> rt.init(num_cpus=4, gcs_storage="sqlite:///var/lib/cellray/gcs.db")  # doctest: +SKIP
    >>> rt.init(runtime_env={"working_dir": ".", "env_vars": {"MODE": "test"}})  # doctest: +SKIP
    """
    global _cluster, _info
    if is_initialized():
        if ignore_reinit_error:
            assert _info is not None
            return _info
        raise AlreadyInitializedError("runtime.init() was already called in this process. Call "
                                      "runtime.shutdown() first, or pass ignore_reinit_error=True.")
    settings = _settings or config.load()
    job_env = _runtime_env.resolve(runtime_env)  # bad paths fail here, before anything starts
    address = address or os.environ.get("CELLRAY_ADDRESS") or None
    started = False
    if address is None:
        if bundle is not None:
            raise ValueError(f"bundle={bundle!r} is for attaching: pass address= too, or drop it")
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        spec = NodeSpec(num_cpus=num_cpus, num_gpus=num_gpus, resources=dict(resources or {}),
                        object_store_memory=object_store_memory)
        cluster = LocalCluster([spec] * num_nodes, settings=settings, gcs_storage=gcs_storage).start()
        _cluster, started = cluster, True
        address = cluster.address
        assert cluster.token_file is not None
        token_file = str(cluster.token_file)
    else:
        if gcs_storage is not None:
            raise ValueError(f"gcs_storage={gcs_storage!r} applies to a cluster that init() starts; "
                             f"the cluster at {address} chose its storage when it started "
                             "(runtime.state.get_head().storage shows it). Drop gcs_storage, or "
                             "call init() without an address to start a new cluster.")
        if address == "auto":
            latest = _session.latest_session_dir()
            if latest is None or not (latest / "address").exists():
                raise ConnectionLostError(
                    "address='auto' found no cluster on this machine. Start one with "
                    "`cellray start --head` or call init() without address.")
            address = (latest / "address").read_text().strip()
        if token_file is None and bundle is None:
            found = _session.find_session_for(address)
            if found is None:
                raise UnauthenticatedError(
                    f"No token for the cluster at {address}: pass token_file=PATH (the token file "
                    "printed by `cellray start --head`, in the cluster's session directory).")
            token_file = str(found / "token")
    try:
        client = _connect(address, security.attach(address, token_file, bundle), settings)
        try:
            _runtime_env.upload(client, job_env)
        except BaseException:
            client.close()
            raise
    except BaseException:
        security.detach()
        if _cluster is not None and started:
            _cluster.stop()
            _cluster = None
        raise
    if log_to_driver:
        client.log_handlers.append(_print_log)
    client.namespace = namespace or str(uuid.uuid4())
    _runtime_env.set_default(job_env)
    _context.set_current(client)
    _info = ClusterInfo(address=address, session_dir=client.session_dir,
                        token_file=str(token_file or ""), node_id=client.node_id.hex(),
                        job_id=client.job_id.hex(), started_here=started)
    return _info


def _connect(address: str, token: str, settings: config.Settings) -> CoreClient:
    """Register a job with the GCS at ``address`` and open a session to a local node."""

    async def find(gcs: GcsClient) -> tuple[bytes, gcs_pb2.NodeRow]:
        await gcs.ping()
        nodes = [gcs_pb2.NodeRow.FromString(v) for _, v in await gcs.list_table("nodes")]
        alive = [n for n in nodes if n.alive]
        if not alive:
            raise NoLiveNodeError(f"The cluster at {address} has no live node. Add one with "
                                  f"`cellray start --address {address}`.", address=address)
        here = socket.gethostname()
        # The first node started on this machine (a local cluster's node-0), like Ray's head:
        # one whose shared memory this process sees; else the first node of the cluster.
        node = min(alive, key=lambda n: (not _shares_memory(n), n.hostname != here, n.start_time))
        job = gcs_pb2.JobRow(driver_pid=os.getpid(), driver_host=here, alive=True)
        job_id = await gcs.register_job(job)
        return job_id, node

    # Everything async runs on the client's IO thread: a notebook's own loop is busy.
    client = CoreClient(node_address="", gcs_address=address, token=token, job_id=b"",
                        settings=settings)
    try:
        client.start_loop()
        assert client.gcs is not None
        client.job_id, node = client.run(find(client.gcs), settings.rpc_timeout_s)
        client.node_address, client.remote = node.address, not _shares_memory(node)
        if client.remote:
            logger.info("node %s at %s is on another machine: objects travel to and from it over "
                        "the network", _ids.short(node.node_id), node.address)
        client.run(client.open_session(), settings.rpc_timeout_s)
    except BaseException:
        client.close()
        raise
    return client


def _shares_memory(node: gcs_pb2.NodeRow) -> bool:
    """This process can read ``node``'s object store: it runs on the same machine."""
    return bool(node.shm_dir) and os.path.isdir(node.shm_dir)


def _print_log(lines: Any) -> None:
    import sys
    client = _context.peek()
    if client is not None and any(h is not _print_log for h in client.log_handlers):
        return  # someone routes output (a notebook sends it to the cell that started it)
    stream = sys.stderr if lines.stderr else sys.stdout
    prefix = f"({lines.name} pid={lines.pid}) "
    stream.write("".join(prefix + line + "\n" for line in lines.lines))
    stream.flush()


def shutdown() -> None:
    """Disconnect; stop the cluster if ``init`` started it. Every process it started is gone after."""
    global _cluster, _info
    client = _context.peek()
    _context.set_current(None)
    _runtime_env.set_default(_runtime_env.EMPTY)
    if client is not None:
        if client.gcs is not None and client.job_id:
            try:
                client.run(client.gcs.finish_job(client.job_id), client.settings.close_timeout_s)
            except Exception as e:  # noqa: BLE001 - the cluster may be gone already; shut down anyway
                logger.debug("could not mark job %s finished: %s", client.job_id.hex(), e)
        client.close()
    security.detach()
    if _cluster is not None:
        _cluster.stop()
        _cluster = None
    _info = None


atexit.register(shutdown)


def _auto_init() -> None:
    """The first call that needs a cluster made without ``init`` (``put``, ``.remote()``...):
    connect as Ray does, to ``CELLRAY_ADDRESS``, else to a cluster running on this machine
    (``cellray start``), else a new local one; say so in one line."""
    if os.environ.get("CELLRAY_ADDRESS"):
        info = init()
    else:
        try:
            info = init(address="auto")
        except (ConnectionError, PermissionError, FileNotFoundError):
            info = init()  # none running here (or only the remains of one that stopped)
    how = "started a new local cluster" if info.started_here else "connected to the cluster"
    print(f"cellray: runtime.init() was not called, so this call {how} at {info.address} "
          f"(runtime.shutdown() stops it).", file=sys.stderr)


_context.auto_init = _auto_init


def _ids_of(refs: Sequence[Any], fn: str) -> list[bytes]:
    ids = []
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"{fn}() expects ObjectRefs, got {type(r).__name__}: {r!r}")
        ids.append(r._id)
    return ids


@overload
def get(object_refs: ObjectRef, *, timeout: float | None = None) -> Any: ...
@overload
def get(object_refs: Sequence[ObjectRef], *, timeout: float | None = None) -> list[Any]: ...


@callers_frames_only
def get(object_refs: Any, *, timeout: float | None = None) -> Any:
    """The value of an ObjectRef, or the values of a list of them (order kept).

    Blocks until ready. Raises the task's error: a ``TaskError`` that is also an instance
    of the original exception's class, with the remote traceback; ``GetTimeoutError``
    after ``timeout`` seconds; ``TaskCancelledError`` for a cancelled task;
    ``WorkerCrashedError`` when the worker died and retries were spent.

    Examples
    --------
    >>> rt.get(f.remote(1))                     # doctest: +SKIP
    >>> rt.get([f.remote(i) for i in range(3)]) # doctest: +SKIP
    """
    client = _context.connected()
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    if isinstance(object_refs, ObjectRef):
        return client.get_values([object_refs._id], timeout)[0]
    if not isinstance(object_refs, (list, tuple)):
        raise ValueError(f"get() expects an ObjectRef or a list of ObjectRefs, got "
                         f"{type(object_refs).__name__}")
    ids = _ids_of(object_refs, "get")
    hook = _context.progress_hook
    if (hook is not None and len(ids) > 1 and client.host.shows_progress
            and not getattr(_in_progress, "on", False)
            and threading.current_thread() is threading.main_thread()):
        _in_progress.on = True  # the hook itself calls get
        try:
            return hook(list(object_refs), timeout=timeout)
        finally:
            _in_progress.on = False
    return client.get_values(ids, timeout)


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the cluster's object store and return a ref to it.

    Large values (numpy arrays above all) go to shared memory: ``get`` on the same node
    returns a read-only view without copying. Returns once the node has stored the value.
    Raises ``ObjectStoreFullError`` when it cannot: the value is larger than the object
    store, or it does not fit and spilling older objects to disk failed
    (``ObjectSpillError``, naming the spill directory; objects stored before are kept).
    """
    client = _context.connected()
    if isinstance(value, ObjectRef):
        raise TypeError("put() of an ObjectRef is not allowed: pass the ref itself instead")
    s = codec.serialize(value)
    oid = _ids.object_id(_ids.new_id(), 0)
    ref = ObjectRef(oid)
    client.put_serialized(oid, s)
    return ref


@callers_frames_only
def wait(object_refs: Sequence[ObjectRef | ObjectRefGenerator], *, num_returns: int = 1,
         timeout: float | None = None, fetch_local: bool = True) -> tuple[list[Any], list[Any]]:
    """Wait until ``num_returns`` of ``object_refs`` are ready or ``timeout`` seconds pass.

    ``object_refs`` may hold generators (``ObjectRefGenerator``): one is ready when its
    next item (or its end) is, as in Ray.

    Returns ``(ready, not_ready)``, each in the order of ``object_refs``; ``ready`` has at
    most ``num_returns`` refs. ``timeout=0`` only checks.

    Raises
    ------
    TypeError
        ``object_refs`` is not a list of ObjectRefs.
    ValueError
        ``num_returns`` is not in 1..len(object_refs), refs repeat, or ``timeout`` < 0.
    """
    client = _context.connected()
    if isinstance(object_refs, ObjectRef):
        raise TypeError("wait() expects a list of ObjectRefs, got a single ObjectRef; "
                        "use wait([ref])")
    if not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"wait() expects a list of ObjectRefs, got {type(object_refs).__name__}")
    # A generator (``ObjectRefGenerator``) is ready when its next item is, as in Ray.
    ids = _ids_of([r.waitable() if isinstance(r, ObjectRefGenerator) else r for r in object_refs],
                  "wait")
    if len(set(ids)) != len(ids):
        raise ValueError("wait() requires a list of unique ObjectRefs")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        raise TypeError(f"num_returns must be an int, got {num_returns!r}")
    if not 1 <= num_returns <= max(len(ids), 1) or (not ids and num_returns != 1):
        raise ValueError(f"num_returns must be between 1 and the number of refs ({len(ids)}), "
                         f"got {num_returns}")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    if not ids:
        return [], []
    ready_ids = set(client.wait_ids(ids, num_returns, timeout)[:num_returns])
    ready = [r for r, i in zip(object_refs, ids, strict=True) if i in ready_ids]
    not_ready = [r for r, i in zip(object_refs, ids, strict=True) if i not in ready_ids]
    return ready, not_ready


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``object_ref``.

    A queued task never runs; a running one gets ``KeyboardInterrupt`` (``force=True``
    kills its worker instead). ``get`` then raises ``TaskCancelledError``. A cancelled
    task is never retried; ``recursive`` also cancels the tasks it submitted.
    """
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef, got {type(object_ref).__name__}")
    _context.connected().cancel(object_ref._id[:16], force, recursive)


def _list(table: str) -> list[bytes]:
    client = _context.current()
    assert client.gcs is not None
    return [v for _, v in client.run(client.gcs.list_table(table), client.settings.rpc_timeout_s)]


def nodes() -> list[dict[str, Any]]:
    """The cluster's nodes, as Ray reports them: dicts with NodeID, Alive, Resources, ..."""
    out = []
    for raw in _list("nodes"):
        n = gcs_pb2.NodeRow.FromString(raw)
        host, _, port = n.address.rpartition(":")
        out.append({"NodeID": n.node_id.hex(), "Alive": n.alive, "alive": n.alive,
                    "NodeManagerAddress": host, "NodeManagerHostname": n.hostname,
                    "NodeManagerPort": int(port) if port.isdigit() else 0, "NodeName": host,
                    "Resources": dict(n.load.total), "Available": dict(n.load.available),
                    "QueueLength": n.load.queue_length,
                    "ObjectStoreUsed": n.load.store_used,
                    "ObjectStoreCapacity": n.load.store_capacity,
                    "DeathCause": n.death_cause, "Labels": dict(n.labels),
                    "GPUs": [{"index": g.index, "name": g.name, "memory_total": g.memory_total,
                              "memory_used": g.memory_used, "utilization": g.utilization}
                             for g in n.load.gpus]})
    return out


def cluster_resources() -> dict[str, float]:
    """Total resources of the live nodes."""
    total: dict[str, float] = {}
    for n in nodes():
        if n["Alive"]:
            for k, v in n["Resources"].items():
                total[k] = total.get(k, 0.0) + v
    return total


def available_resources() -> dict[str, float]:
    """Resources not in use on the live nodes, as of their latest heartbeats."""
    total: dict[str, float] = {}
    for n in nodes():
        if n["Alive"]:
            for k, v in n["Available"].items():
                total[k] = total.get(k, 0.0) + v
    return {k: v for k, v in total.items() if v > 0}




def get_gpu_ids() -> list[int]:
    """The GPU indices reserved for the calling task or actor (``[]`` in a driver).

    The same GPUs are in ``CUDA_VISIBLE_DEVICES`` while the task runs. Fractional
    requests (``num_gpus=0.25``) share one GPU.
    """
    return _context.current().host.gpu_ids()
