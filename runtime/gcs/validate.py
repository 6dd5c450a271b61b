"""Checks of what clients send the GCS, before anything is stored: a bad field is refused
(``InvalidRequestError``, INVALID_ARGUMENT on the wire) with its name, and one malformed
request can never break a read of the table for everyone else."""

from __future__ import annotations

import math

from runtime.exceptions import InvalidRequestError
from runtime.protocol import common_pb2, gcs_pb2

#: Longest host name, resource name or label a node may report.
_MAX_NAME = 255


def check_node_row(row: gcs_pb2.NodeRow) -> None:
    """A node's registration: 16-byte id, ``host:port`` address, sane pid, names and load."""
    if len(row.node_id) != 16:
        raise InvalidRequestError(f"node.node_id must be 16 bytes, got {len(row.node_id)}")
    host, sep, port = row.address.rpartition(":")
    if not sep or not host or any(c.isspace() for c in host) or len(host) > _MAX_NAME:
        raise InvalidRequestError(f"node.address must be 'host:port', got {row.address[:80]!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequestError(f"node.address must end in a port 1..65535, got {port[:20]!r}")
    if row.pid < 0:
        raise InvalidRequestError(f"node.pid must be >= 0, got {row.pid}")
    if len(row.hostname) > _MAX_NAME:
        raise InvalidRequestError(f"node.hostname is longer than {_MAX_NAME} characters")
    for key, value in row.labels.items():
        if not key or len(key) > _MAX_NAME or len(value) > _MAX_NAME:
            raise InvalidRequestError(f"node.labels[{key[:40]!r}]: keys and values must be 1..{_MAX_NAME} "
                                      "characters")
    check_load(row.load, "node.load")


def check_load(load: common_pb2.NodeLoad, field: str = "load") -> None:
    """A node's load (registration or heartbeat): finite, non-negative amounts."""
    for name, table in (("total", load.total), ("available", load.available)):
        for key, value in table.items():
            if not key or len(key) > _MAX_NAME:
                raise InvalidRequestError(f"{field}.{name}: resource names must be 1..{_MAX_NAME} characters")
            if not math.isfinite(value) or value < 0:
                raise InvalidRequestError(f"{field}.{name}[{key!r}] must be a finite amount >= 0, "
                                          f"got {value}")
    for name in ("queue_length", "store_used", "store_capacity", "num_workers", "memory_used",
                 "memory_total"):
        if getattr(load, name) < 0:
            raise InvalidRequestError(f"{field}.{name} must be >= 0, got {getattr(load, name)}")
