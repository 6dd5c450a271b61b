"""processes.json: which cluster processes a session started, and finding and stopping them.

Every ``LocalCluster`` records the pids it starts in its session directory::

    {"head": 4120, "schedulers": [4121], "nodes": [4122, 4170], "supervisor": 4119,
     "detached": [4119, 4120, 4122, 4170]}

``head`` is the GCS process (None for a session that only holds nodes joined to a head
elsewhere; the GCS running now, after a restart), ``schedulers`` the global scheduler
replicas (those running now), ``nodes`` the node managers, ``supervisor`` the head process
of a detached cluster that restarts the GCS and the replicas when they die
(``python -m runtime.gcs.supervisor``; absent for ``rt.init()`` clusters, whose driver
supervises them), and ``detached`` the pids that outlive the process that started them
(``cellray start``): ``cellray stop`` stops those of one cluster (``--all``: of every
session), and the schedulers of a detached head.
Processes of ``rt.init()`` clusters are not detached; they exit with their driver. Keys
this module does not know are kept as they are.

Several processes may add nodes to one session at once (``cellray start --address``
twice), so every update is a read-merge-write under an ``flock`` on ``processes.lock``.

Before anything signals a recorded pid it checks that the pid still is a cluster process
of that session (its command line runs ``runtime.gcs``, ``runtime.gcs.supervisor``,
``runtime.scheduler`` or ``runtime.node`` with ``--session-dir`` naming the session): a
pid may have been reused since it was recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import pathlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psutil

from runtime import _session
from runtime.cluster.process import stop_pid

__all__ = [
    "PROCESSES_FILE",
    "Recorded",
    "StoppedProcess",
    "detached_sessions",
    "forget",
    "is_cluster_process",
    "read",
    "record",
    "record_head",
    "running_heads",
    "running_nodes_only",
    "same_address",
    "sessions",
    "stop_detached",
    "stop_sessions",
]

#: The file, in a session directory, that lists the session's processes.
PROCESSES_FILE = "processes.json"
_LOCK_FILE = "processes.lock"
#: Command-line markers of the daemons a session records, by role.
_MODULES = {"head": "runtime.gcs", "scheduler": "runtime.scheduler", "node": "runtime.node",
            "supervisor": "runtime.gcs.supervisor"}
#: The order ``stop_detached`` stops them in: the supervisor before what it supervises, so
#: that nothing is restarted during a stop (it stops its replicas and GCS itself).
_STOP_ORDER = ("node", "supervisor", "scheduler", "head")


@dataclass
class Recorded:
    """The contents of one session's processes.json."""

    #: pid of the GCS (head) process, or None when the head runs elsewhere.
    head: int | None = None
    #: pids of the node managers, in the order they were started.
    nodes: list[int] = field(default_factory=list)
    #: pids that outlive their starter (``cellray start``); ``cellray stop`` stops these.
    detached: list[int] = field(default_factory=list)
    #: pids of the global scheduler replicas.
    schedulers: list[int] = field(default_factory=list)
    #: pid of the detached head's supervisor, or None.
    supervisor: int | None = None
    #: Keys of the file that this module does not know, kept as they were.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        supervisor = {} if self.supervisor is None else {"supervisor": self.supervisor}
        return json.dumps({**self.extra, "head": self.head, "schedulers": self.schedulers,
                           "nodes": self.nodes, "detached": self.detached, **supervisor})


@dataclass(frozen=True)
class StoppedProcess:
    """One process that ``stop_detached`` stopped."""

    #: "head", "supervisor", "scheduler" or "node".
    role: str
    pid: int
    session_dir: pathlib.Path
    #: The GCS address of the session, "" when unknown.
    address: str


@contextlib.contextmanager
def _locked(session_dir: pathlib.Path) -> Iterator[None]:
    fd = os.open(session_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read(session_dir: pathlib.Path) -> Recorded | None:
    """The session's processes.json, or None when it has none or it is unreadable."""
    try:
        raw = json.loads((session_dir / PROCESSES_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    def pids(key: str) -> list[int]:
        value = raw.get(key)
        return [p for p in value if isinstance(p, int)] if isinstance(value, list) else []

    head, supervisor = raw.get("head"), raw.get("supervisor")
    known = ("head", "nodes", "detached", "schedulers", "supervisor")
    return Recorded(head=head if isinstance(head, int) else None, nodes=pids("nodes"),
                    detached=pids("detached"), schedulers=pids("schedulers"),
                    supervisor=supervisor if isinstance(supervisor, int) else None,
                    extra={k: v for k, v in raw.items() if k not in known})


def _write(session_dir: pathlib.Path, rec: Recorded) -> None:
    tmp = session_dir / (PROCESSES_FILE + ".tmp")
    tmp.write_text(rec.to_json())
    os.replace(tmp, session_dir / PROCESSES_FILE)


def record(session_dir: pathlib.Path, *, head: int | None, nodes: list[int], detached: bool,
           schedulers: Sequence[int] = ()) -> None:
    """Merge these pids into the session's processes.json (created when missing).

    ``head`` None keeps the recorded head; ``nodes`` and ``schedulers`` are added after
    the recorded ones; with ``detached`` every given pid is also marked detached.
    """
    with _locked(session_dir):
        rec = read(session_dir) or Recorded()
        if head is not None:
            rec.head = head
        rec.nodes += [p for p in nodes if p not in rec.nodes]
        rec.schedulers += [p for p in schedulers if p not in rec.schedulers]
        if detached:
            ours = ([head] if head is not None else []) + list(schedulers) + nodes
            rec.detached += [p for p in ours if p not in rec.detached]
        _write(session_dir, rec)


def record_head(session_dir: pathlib.Path, *, gcs: int | None, schedulers: Sequence[int] | None,
                supervisor: int | None, detached: bool) -> None:
    """Set the head's pids running now: the GCS, the replicas (replacing the recorded ones:
    a restarted replica has a new pid) and the supervisor; None keeps what is recorded.
    With ``detached`` they are also marked detached."""
    with _locked(session_dir):
        rec = read(session_dir) or Recorded()
        if gcs is not None:
            rec.head = gcs
        if supervisor is not None:
            rec.supervisor = supervisor
        if schedulers is not None:
            rec.schedulers = list(schedulers)
        if detached:
            ours = [p for p in (supervisor, gcs) if p is not None] + list(schedulers or ())
            rec.detached += [p for p in ours if p not in rec.detached]
        _write(session_dir, rec)


def forget(session_dir: pathlib.Path, pids: set[int]) -> None:
    """Drop ``pids`` from the session's detached list (they were stopped)."""
    with _locked(session_dir):
        rec = read(session_dir)
        if rec is not None:
            rec.detached = [p for p in rec.detached if p not in pids]
            _write(session_dir, rec)


def _same_dir(a: str, b: pathlib.Path) -> bool:
    try:
        return pathlib.Path(a).resolve() == b.resolve()
    except OSError:
        return False


def is_cluster_process(pid: int, session_dir: pathlib.Path, role: str) -> bool:
    """True if ``pid`` is a live ``role`` ("head", "supervisor", "scheduler", "node") process
    of ``session_dir``."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if _MODULES[role] not in cmdline:
        return False
    for flag, value in itertools.pairwise(cmdline):
        if flag == "--session-dir":
            return _same_dir(value, session_dir)
    return False


def sessions(root: pathlib.Path) -> list[pathlib.Path]:
    """Session directories under ``root``, newest first (not the ``session_latest`` link).

    Newest means created last: the one ``session_latest`` names, then the others by the
    creation time in their names (``session_<date>_<time>_<pid>_<hex>``). Not by mtime:
    a session's directory changes when its head restarts the GCS or a node joins it.
    """
    if not root.is_dir():
        return []
    found = []
    for d in root.glob("session_*"):
        try:
            if d.is_symlink() or not d.is_dir():
                continue
        except OSError:  # removed meanwhile
            continue
        found.append(d)
    found.sort(key=lambda d: d.name, reverse=True)
    link = root / "session_latest"
    latest = link.resolve() if link.is_symlink() else None
    return sorted(found, key=lambda d: d.resolve() != latest)  # stable: latest first


def _address(session_dir: pathlib.Path) -> str:
    try:
        return (session_dir / "address").read_text().strip()
    except OSError:
        return ""


def running_heads(root: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """``(session_dir, address)`` of each session whose head runs here, newest first: its
    GCS, or its supervisor (which is restarting the GCS)."""
    out = []
    for d in sessions(root):
        rec = read(d)
        if rec is None:
            continue
        if ((rec.head is not None and is_cluster_process(rec.head, d, "head"))
                or (rec.supervisor is not None and is_cluster_process(rec.supervisor, d, "supervisor"))):
            address = _address(d)
            if address:
                out.append((d, address))
    return out


def running_nodes_only(root: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """``(session_dir, head address)`` of sessions with live nodes but no head here, newest first.

    These are nodes joined to a head on another machine (``cellray start --address``).
    """
    out = []
    for d in sessions(root):
        rec = read(d)
        if rec is None or rec.head is not None:
            continue
        if any(is_cluster_process(p, d, "node") for p in rec.nodes):
            address = _address(d)
            if address:
                out.append((d, address))
    return out


def _detached_targets(d: pathlib.Path, rec: Recorded) -> list[StoppedProcess]:
    """The live detached processes of one session, with their roles.

    A detached head's schedulers count as detached too: they are started with the head,
    whether or not the starter marked them.
    """
    roles = dict.fromkeys(rec.nodes, "node")
    roles.update(dict.fromkeys(rec.schedulers, "scheduler"))
    if rec.head is not None:
        roles[rec.head] = "head"
    if rec.supervisor is not None:
        roles[rec.supervisor] = "supervisor"
    pids = list(rec.detached)
    if rec.head is not None and rec.head in rec.detached:
        pids += [p for p in rec.schedulers if p not in pids]
    address = _address(d)
    return [StoppedProcess(roles.get(pid, "node"), pid, d, address) for pid in pids
            if is_cluster_process(pid, d, roles.get(pid, "node"))]


def same_address(a: str, b: str) -> bool:
    """True if GCS addresses ``a`` and ``b`` name the same server: equal, or the same port
    on this machine's loopback names (127.0.0.1, localhost, 0.0.0.0)."""
    host_a, _, port_a = a.rpartition(":")
    host_b, _, port_b = b.rpartition(":")
    local = {"127.0.0.1", "localhost", "0.0.0.0"}
    return port_a == port_b and (host_a == host_b or {host_a, host_b} <= local)


def detached_sessions(root: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """``(session_dir, address)`` of each session with a live detached process (one that
    ``cellray start`` started), newest first; address "" when the session has none."""
    out = []
    for d in sessions(root):
        rec = read(d)
        if rec is not None and _detached_targets(d, rec):
            out.append((d, _address(d)))
    return out


def stop_detached(root: pathlib.Path, grace: float = 5.0) -> list[StoppedProcess]:
    """Stop every detached process recorded under ``root`` (``stop_sessions`` of them all)."""
    return stop_sessions(sessions(root), grace)


def stop_sessions(session_dirs: Sequence[pathlib.Path], grace: float = 5.0) -> list[StoppedProcess]:
    """Stop the detached processes of ``session_dirs``: nodes, then supervisors, then
    schedulers, then heads.

    Each phase stops its processes in parallel (SIGTERM to the process group, ``grace``
    seconds, then SIGKILL), and returns when they are gone. A supervisor stops its own
    replicas and GCS; those the later phases find gone count as stopped all the same.
    Then each session whose head was stopped or that has no process left loses its token
    and TLS files (``_session.remove_secrets``; a node's session joined with a bundle or
    a token file holds copies of them, the files passed in stay). Returns what was
    running and is stopped.
    """
    targets: dict[str, list[StoppedProcess]] = {role: [] for role in _STOP_ORDER}
    for d in session_dirs:
        rec = read(d)
        if rec is not None:
            for target in _detached_targets(d, rec):
                targets[target.role].append(target)

    def stop(p: StoppedProcess) -> None:
        # Checked again: a process a supervisor stopped may have left its pid to another.
        if is_cluster_process(p.pid, p.session_dir, p.role):
            # A supervisor stops its replicas and GCS before it exits: give it their time too.
            stop_pid(p.pid, grace * 3 if p.role == "supervisor" else grace)

    stopped: list[StoppedProcess] = []
    for role in _STOP_ORDER:
        phase = targets[role]
        if not phase:
            continue
        with ThreadPoolExecutor(max_workers=min(len(phase), 16)) as pool:
            list(pool.map(stop, phase))
        stopped += phase  # each was running when the stop began, and is gone now
    by_session: dict[pathlib.Path, set[int]] = {}
    for p in stopped:
        by_session.setdefault(p.session_dir, set()).add(p.pid)
    for d, pids in by_session.items():
        forget(d, pids)
    heads = {p.session_dir for p in stopped if p.role == "head"}
    for d in by_session:
        # The session's cluster is gone (its head stopped), or nothing of it runs here any
        # more (nodes joined to a head elsewhere): its token and TLS files go, its logs stay.
        if d in heads or not _session.in_use(d):
            _session.remove_secrets(d)
    return stopped
