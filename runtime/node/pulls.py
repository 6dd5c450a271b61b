"""Pulling an object's bytes from the node that holds it (``PullObject``, in chunks)."""

from __future__ import annotations

import os
from typing import Any

from runtime.protocol import common_pb2, node_pb2


async def fetch_object(rpc: Any, oid: bytes, path: str, node_id: bytes,
                       metadata: tuple[tuple[str, str], ...]) -> common_pb2.ObjectData:
    """Pull object ``oid`` through ``rpc`` (the NodeManager client of the node holding it) for
    node ``node_id``: into a new file at ``path`` (a shared-memory object), or into memory
    when the holder keeps it there (small objects, errors). A failed pull leaves no file.

    Raises what the stream or the file raises (``grpc.aio.AioRpcError``, ``OSError``).
    """
    size, nested = 0, []
    inline: bytearray | None = None
    fd = -1
    try:
        try:
            first = True
            req = node_pb2.PullObjectRequest(object_id=oid, node_id=node_id)
            async for chunk in rpc.PullObject(req, metadata=metadata):
                if first:
                    size, nested, first = chunk.total_size, list(chunk.nested_refs), False
                    if chunk.inline:
                        inline = bytearray()
                    else:
                        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                if inline is not None:
                    inline += chunk.data
                    continue
                view = memoryview(chunk.data)
                while view:
                    view = view[os.write(fd, view):]
        finally:
            if fd >= 0:
                os.close(fd)
    except BaseException:
        if fd >= 0:
            try:
                os.unlink(path)
            except OSError:
                pass
        raise
    if inline is not None:
        data = common_pb2.ObjectData(object_id=oid, inline=bytes(inline), size=len(inline), node_id=node_id)
    else:
        data = common_pb2.ObjectData(object_id=oid, shm_path=path, size=size, node_id=node_id)
    data.nested_refs.extend(nested)
    return data
