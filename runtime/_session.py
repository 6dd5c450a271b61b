"""Session directories: where a cluster keeps its address, token, logs and spill files.

Layout::

    /tmp/cellray/session_<time>_<pid>/   (a `session_latest` link beside it)
        address          the GCS address, host:port
        token            the cluster token, mode 0600
        tls/             with TLS: the CA, certificates, keys, join bundle (0600; runtime/_tls.py)
        processes.json   pids started by `cellray start` (for `cellray stop`)
        logs/            one log per process
        spill/           objects spilled from shared memory

The token and the TLS files go when the session's processes stop (``remove_secrets``: the
head's session when its cluster stops, a joined node's when its nodes stop). When a new
session starts, the sessions whose processes are all gone (``in_use``; a crash left their
secrets behind) are pruned: the newest ``KEEP_SESSIONS`` lose their token and TLS files
and keep their logs, the older ones are removed.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import secrets
import shutil
import time

import psutil

from runtime.exceptions import TokenFileError

ROOT = pathlib.Path(os.environ.get("CELLRAY_TMPDIR", "/tmp/cellray"))


def new_session_dir(root: pathlib.Path | None = None) -> pathlib.Path:
    """Create a fresh session directory and point ``session_latest`` at it."""
    root = root or ROOT
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    path = root / f"session_{stamp}_{os.getpid()}_{secrets.token_hex(2)}"
    (path / "logs").mkdir(parents=True)
    (path / "spill").mkdir()
    latest = root / "session_latest"
    tmp = root / f".latest_{os.getpid()}_{secrets.token_hex(2)}"
    tmp.symlink_to(path.name)
    os.replace(tmp, latest)
    prune_sessions(root, keep=KEEP_SESSIONS)
    return path


#: Session directories kept for their logs once their cluster is gone (the newest ones).
KEEP_SESSIONS = 10


def prune_sessions(root: pathlib.Path, keep: int) -> list[pathlib.Path]:
    """Clean up the sessions under ``root`` whose cluster is gone (``in_use`` is false):
    remove those beyond the ``keep`` newest, and the secrets (``remove_secrets``) of the
    kept ones, whose logs stay (a cluster that crashed did not remove them). Returns the
    removed directories."""
    sessions = sorted(root.glob("session_*_*"), key=lambda d: d.name, reverse=True)
    removed = []
    for i, d in enumerate(sessions):
        if d.is_symlink() or not d.is_dir() or in_use(d):
            continue
        if i < keep:
            remove_secrets(d)
        else:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def in_use(session_dir: pathlib.Path, besides: int | None = None) -> bool:
    """True while a process of ``session_dir`` runs (``besides`` not counted): the one that
    made it (named in it, and started before it), or one recorded in its processes.json
    whose command line still names it (``--session-dir``). A pid reused by another
    process does not count; one this user may not inspect does (it may be a cluster's)."""
    parts = session_dir.name.split("_")
    # session_<date>_<time>_<pid>_<hex>
    maker = int(parts[3]) if len(parts) >= 5 and parts[3].isdigit() else None
    if maker is not None and maker != besides and _runs(maker, started_by=_made(parts[1], parts[2])):
        return True
    try:
        recorded = json.loads((session_dir / "processes.json").read_text())
    except (OSError, ValueError):
        recorded = {}
    pids: set[int] = set()
    if isinstance(recorded, dict):
        for value in recorded.values():
            pids.update(p for p in (value if isinstance(value, list) else [value])
                        if isinstance(p, int) and not isinstance(p, bool))
    return any(_runs(pid, session_dir=session_dir) for pid in pids - {besides})


#: Seconds a session's name may lag its maker's start (the name has whole seconds).
_CLOCK_SLACK_S = 5.0


def _made(date: str, clock: str) -> float | None:
    """When a session was made, from its name's local time (the later reading of an hour
    that a clock change repeats); None when the name has no time."""
    try:
        t = time.strptime(f"{date}_{clock}", "%Y-%m-%d_%H-%M-%S")
    except ValueError:
        return None
    return max(time.mktime((*t[:8], dst)) for dst in (0, 1))


def _runs(pid: int, *, started_by: float | None = None,
          session_dir: pathlib.Path | None = None) -> bool:
    """True if ``pid`` runs (not a zombie), started by ``started_by`` (epoch seconds) and
    with ``--session-dir`` naming ``session_dir`` when given."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started_by is not None and proc.create_time() > started_by + _CLOCK_SLACK_S:
            return False  # the pid was reused after the session was made
        if session_dir is None:
            return True
        named = [v for flag, v in itertools.pairwise(proc.cmdline()) if flag == "--session-dir"]
        if not named:
            return False
        path = pathlib.Path(named[0])
        path = path if path.is_absolute() else pathlib.Path(proc.cwd()) / path
    except psutil.AccessDenied:
        return True
    except psutil.Error:  # NoSuchProcess, ZombieProcess
        return False
    try:
        return path.resolve() == session_dir.resolve()
    except OSError:
        return False


def remove_secrets(session_dir: pathlib.Path) -> None:
    """The cluster of ``session_dir`` is gone: remove its token and TLS files (its logs stay).

    Only the session's own files: a token or TLS directory there that is a link is
    unlinked, never followed (files a user passed in stay where they are).
    """
    for path in (session_dir / "token", session_dir / "tls"):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError:  # another user's session, or removed meanwhile
            continue


def write_token(session_dir: pathlib.Path) -> pathlib.Path:
    """Generate a 256-bit token and write it 0600; return the file's path."""
    path = session_dir / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def read_token(path: str | os.PathLike[str]) -> str:
    """Read a token file, with an error that says what to do when it is missing.

    Raises ``TokenFileError`` (a ``FileNotFoundError``) when ``path`` does not exist.
    """
    try:
        return pathlib.Path(path).read_text().strip()
    except FileNotFoundError:
        raise TokenFileError(
            f"token file {path} does not exist; pass the token file printed by "
            "`cellray start --head` (it is in the cluster's session directory)",
            path=str(path)) from None


def latest_session_dir(root: pathlib.Path | None = None) -> pathlib.Path | None:
    """The newest session on this machine, or None."""
    link = (root or ROOT) / "session_latest"
    return link.resolve() if link.exists() else None


def find_session_for(address: str, root: pathlib.Path | None = None) -> pathlib.Path | None:
    """The local session directory whose GCS address is ``address``, newest first."""
    root = root or ROOT
    if not root.exists():
        return None
    host, _, port = address.rpartition(":")
    candidates = sorted(root.glob("session_*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for d in candidates:
        try:
            got = (d / "address").read_text().strip()
        except OSError:
            continue
        ghost, _, gport = got.rpartition(":")
        if gport == port and (ghost == host or {ghost, host} <= {"127.0.0.1", "localhost", "0.0.0.0"}):
            return d
    return None
