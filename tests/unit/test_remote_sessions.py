"""A driver on another machine (``Hello.remote``): its Session's ``Conn`` writes its large
puts into the real store as they arrive, sends the bytes of an object it asked for, and
only a note for results it did not ask for (``runtime.node.sessions.Conn``)."""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from runtime.node.sessions import Conn
from runtime.object_store.store import SharedMemoryStore
from runtime.protocol import codec, node_pb2

OID = b"o" * 20


@pytest.fixture
def store() -> Iterator[SharedMemoryStore]:
    base = pathlib.Path("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
    shm_dir = base / f"cellray-test-remote-{uuid.uuid4().hex[:8]}"
    s = SharedMemoryStore(shm_dir, shm_dir.with_name(shm_dir.name + "-spill"), 8 << 20)
    try:
        yield s
    finally:
        s.close()


def _conn(store: SharedMemoryStore) -> Conn:
    conn = Conn()
    conn.make_remote(store, inline_threshold=1024)
    return conn


def _put(blob: bytes) -> node_pb2.ClientBatch:
    op = node_pb2.ClientOp()
    op.put.object_id, op.put.inline, op.put.size = OID, blob, len(blob)
    return node_pb2.ClientBatch(ops=[op])


def _object(path: str) -> node_pb2.NodeOp:
    op = node_pb2.NodeOp()
    op.object.object_id, op.object.shm_path, op.object.size = OID, path, 1
    return op


def test_a_large_put_from_another_machine_lands_in_the_store(store: SharedMemoryStore) -> None:
    conn = _conn(store)
    value = np.arange(100_000, dtype=np.int64)
    blob = codec.serialize(value).to_bytes()
    landed = conn.landed(_put(blob)).ops[0].put
    assert landed.shm_path == store.path_for(OID) and landed.inline == b"" and landed.size == len(blob)
    assert pathlib.Path(landed.shm_path).read_bytes() == blob
    again = conn.landed(_put(blob)).ops[0].put  # sent twice: the first copy stands
    assert again.shm_path == landed.shm_path
    small = conn.landed(_put(b"tiny")).ops[0].put
    assert small.inline == b"tiny" and not small.shm_path


def test_an_object_goes_with_its_bytes_only_when_asked_for(store: SharedMemoryStore) -> None:
    conn = _conn(store)
    blob = codec.serialize(np.ones(50_000)).to_bytes()
    path = store.path_for(OID)
    pathlib.Path(path).write_bytes(blob)
    conn.send(_object(path))  # a result pushed to its owner: only a note
    note = conn.out.pop().object
    assert (note.shm_path, note.inline, note.object_id) == ("", b"", OID)
    get = node_pb2.ClientOp()
    get.get.object_ids.append(OID)
    conn.landed(node_pb2.ClientBatch(ops=[get]))
    conn.send(_object(path))  # asked for: the bytes travel
    sent = conn.out.pop().object
    assert sent.inline == blob and not sent.shm_path
    np.testing.assert_array_equal(codec.deserialize(sent.inline), np.ones(50_000))
    assert conn.wanted == set()


def test_a_local_clients_ops_pass_unchanged(store: SharedMemoryStore) -> None:
    conn = Conn()
    batch = _put(b"x" * 5000)
    assert conn.landed(batch) is batch and batch.ops[0].put.inline == b"x" * 5000
    conn.send(_object("/dev/shm/somewhere"))
    assert conn.out[0].object.shm_path == "/dev/shm/somewhere" and not conn.remote
