"""The ``gcs_storage`` setting, parsed: which backend, which file, which Redis servers.

Accepted values::

    memory                          in the GCS's memory: gone when the GCS stops (tests)
    sqlite                          the file gcs.db in the session directory (the default)
    sqlite:///var/lib/cellray/gcs.db   that file (an absolute path: three slashes)
    redis://10.0.0.5:6379,10.0.0.6:6379   these Redis servers, one GCS shard on each

Pure (no I/O), so ``runtime.config`` validates the setting with it when settings are built.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.exceptions import ConfigError

__all__ = ["ACCEPTED", "StorageSpec", "parse_storage", "storage_problem"]

#: What ``gcs_storage`` accepts, for error messages.
ACCEPTED = "memory, sqlite, sqlite:///ABSOLUTE/PATH.db or redis://HOST:PORT[,HOST:PORT...]"


@dataclass(frozen=True)
class StorageSpec:
    """A parsed ``gcs_storage`` value.

    Examples
    --------
    >>> parse_storage("redis://127.0.0.1:6379,127.0.0.1:6380").servers
    (('127.0.0.1', 6379), ('127.0.0.1', 6380))
    >>> parse_storage("sqlite").path
    ''
    """

    kind: str  #: ``memory``, ``sqlite`` or ``redis``
    path: str = ""  #: sqlite: the database file (absolute), or "" for ``<session dir>/gcs.db``
    servers: tuple[tuple[str, int], ...] = ()  #: redis: ``(host, port)`` of each server, in shard order


def parse_storage(text: str) -> StorageSpec:
    """The ``StorageSpec`` of ``text``; ``ConfigError`` saying what is wrong and what is accepted."""
    problem, spec = _parse(text.strip())
    if spec is None:
        raise ConfigError(f"gcs_storage {text!r} {problem}", setting="gcs_storage")
    return spec


def storage_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a ``gcs_storage`` value (``"must be ...: why"``), or None."""
    problem, spec = _parse(text.strip())
    return None if spec is not None else problem


def _parse(text: str) -> tuple[str, StorageSpec | None]:
    must = f"must be {ACCEPTED}"
    if text in ("memory", "sqlite"):
        return "", StorageSpec(text)
    if text.startswith("sqlite://"):
        path = text[len("sqlite://"):]
        if not path.startswith("/"):
            return (f"{must}: the path {path!r} is not absolute (write sqlite:///abs/path.db, "
                    "with three slashes)"), None
        if path.endswith("/"):
            return f"{must}: {path!r} names a directory, not a database file", None
        return "", StorageSpec("sqlite", path=path)
    if text.startswith("redis://"):
        servers: list[tuple[str, int]] = []
        for part in text[len("redis://"):].split(","):
            host, colon, port = part.strip().rpartition(":")
            if not colon or not host or "/" in part:
                return f"{must}: {part.strip()!r} is not HOST:PORT", None
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                return f"{must}: the port of {part.strip()!r} is not in 1..65535", None
            server = (host.strip("[]"), int(port))
            if server in servers:
                return f"{must}: {part.strip()!r} is named twice (each shard needs its own server)", None
            servers.append(server)
        return "", StorageSpec("redis", servers=tuple(servers))
    scheme = text.partition("://")[0] if "://" in text else text
    return f"{must}: unknown backend {scheme!r}", None
