"""Identifiers: random task/client/node ids, object ids derived from task ids."""

from __future__ import annotations

import os

TASK_ID_LEN = 16
OBJECT_ID_LEN = 20


def new_id() -> bytes:
    """A random 16-byte id (tasks, clients, nodes, workers, actors)."""
    return os.urandom(TASK_ID_LEN)


def object_id(task_id: bytes, index: int) -> bytes:
    """The id of return value ``index`` (1-based) of ``task_id``; index 0 is for puts."""
    return task_id + index.to_bytes(4, "little")


def task_of(object_id_: bytes) -> bytes:
    """The task that produced ``object_id_``."""
    return object_id_[:TASK_ID_LEN]


def short(id_: bytes) -> str:
    """A short hex prefix for messages and logs."""
    return id_.hex()[:12]
