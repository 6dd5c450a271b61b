"""Session directories: where a cluster keeps its address, token, logs and spill files.

Layout::

    /tmp/cellray/session_<time>_<pid>/   (a `session_latest` link beside it)
        address          the GCS address, host:port
        token            the cluster token, mode 0600
        tls/             with TLS: the CA, certificates, keys, join bundle (0600; runtime/_tls.py)
        processes.json   pids started by `cellray start` (for `cellray stop`)
        logs/            one log per process
        spill/           objects spilled from shared memory

The token and the TLS files go when the cluster stops (``remove_secrets``); the directories of clusters
that are gone are pruned when a new session starts, the newest ``KEEP_SESSIONS`` kept for
their logs.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import time

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
    """Remove the session directories under ``root`` beyond the ``keep`` newest whose
    cluster is gone (no process of theirs alive: the one that made the session, or one
    recorded in its processes.json); the removed paths."""
    sessions = sorted(root.glob("session_*_*"), key=lambda d: d.name, reverse=True)
    removed = []
    for d in sessions[keep:]:
        if d.is_symlink() or not d.is_dir() or _in_use(d):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _in_use(session_dir: pathlib.Path) -> bool:
    pids: list[int] = []
    parts = session_dir.name.split("_")
    if len(parts) >= 5 and parts[3].isdigit():  # session_<date>_<time>_<pid>_<hex>
        pids.append(int(parts[3]))
    try:
        recorded = json.loads((session_dir / "processes.json").read_text())
    except (OSError, ValueError):
        recorded = {}
    if isinstance(recorded, dict):
        for value in recorded.values():
            for pid in value if isinstance(value, list) else [value]:
                if isinstance(pid, int):
                    pids.append(pid)
    return any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_secrets(session_dir: pathlib.Path) -> None:
    """The cluster of ``session_dir`` stopped: remove its token and TLS files (its logs stay)."""
    (session_dir / "token").unlink(missing_ok=True)
    shutil.rmtree(session_dir / "tls", ignore_errors=True)


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
