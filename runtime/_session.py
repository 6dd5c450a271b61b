"""Session directories: where a cluster keeps its address, token, logs and spill files.

Layout::

    /tmp/cellray/session_<time>_<pid>/   (a `session_latest` link beside it)
        address          the GCS address, host:port
        token            the cluster token, mode 0600
        processes.json   pids started by `cellray start` (for `cellray stop`)
        logs/            one log per process
        spill/           objects spilled from shared memory
"""

from __future__ import annotations

import os
import pathlib
import secrets
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
    return path


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
