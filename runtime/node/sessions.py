"""The node's Session streams: one ``Conn`` per connected driver or worker.

A Conn collects the ops the state sends to its client; the servicer writes whatever has
accumulated as one ``NodeBatch`` whenever it wakes up. ``Sessions`` maps client ids to
their Conn (the outlet of ``Send`` actions), and ``apply_ops`` feeds a client's batch of
ops to the state, one table entry per kind of op.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from runtime import _ids
from runtime._ids import OBJECT_ID_LEN
from runtime.exceptions import InvalidRequestError
from runtime.object_store.shm import read_bytes, write_bytes
from runtime.protocol import codec, common_pb2, node_pb2
from runtime.protocol.checks import spec_problem
from runtime.protocol.states import ClientKind

if TYPE_CHECKING:
    from runtime.node.state import LocalScheduler
    from runtime.object_store.store import SharedMemoryStore

logger = logging.getLogger(__name__)



def client_kind(text: str) -> ClientKind | None:
    """The kind of client a Session's Hello names, or None when it names none we know."""
    try:
        return ClientKind(text)
    except ValueError:
        return None


class Conn:
    """One Session stream: the ops waiting to be written as the next batch.

    A driver on another machine (``Hello.remote``) cannot read this node's shared memory,
    so its objects travel inline: its large puts are written into the store here as they
    arrive (``landed``), an object it asked for (``get``) goes with its bytes, and any other
    object (a result it owns) goes as a note that it is ready here, which the driver asks
    for when it reads the value: nothing crosses the network that is not read.
    """

    __slots__ = ("_inline_max", "_store", "client_id", "closed", "out", "reason", "wake", "wanted")

    def __init__(self) -> None:
        self.client_id = b""
        self.out: list[node_pb2.NodeOp] = []
        self.wake = asyncio.Event()
        self.closed = False
        #: Why the node ended the stream, for the client (it ends with UNAVAILABLE); "": it just ends.
        self.reason = ""
        #: A remote driver's: the store its objects go into and come from (None: a local client).
        self._store: SharedMemoryStore | None = None
        self._inline_max = 0
        #: Objects a remote driver asked for and has not been sent yet.
        self.wanted: set[bytes] = set()

    @property
    def remote(self) -> bool:
        """The client is on another machine (see the class)."""
        return self._store is not None

    def make_remote(self, store: SharedMemoryStore, inline_threshold: int) -> None:
        """The client is a driver on another machine (its Hello said so)."""
        self._store, self._inline_max = store, inline_threshold

    def send(self, op: node_pb2.NodeOp) -> None:
        if self._store is not None:
            op = self._carried(op)
        self.out.append(op)
        if len(self.out) == 1:
            self.wake.set()

    def _carried(self, op: node_pb2.NodeOp) -> node_pb2.NodeOp:
        """``op`` as a remote driver gets it: an object in the store with its bytes when it
        asked for it, else as a note that it is ready here."""
        kind = op.WhichOneof("op")
        if kind == "object_error":
            self.wanted.discard(op.object_error.object_id)
        if kind != "object":
            return op
        data = op.object
        if not data.shm_path:
            if data.inline:
                self.wanted.discard(data.object_id)
            return op
        path, data.shm_path = data.shm_path, ""
        if data.object_id in self.wanted:
            try:
                data.inline = read_bytes(path)
            except OSError as e:  # spilled or freed since: the driver asks again
                logger.info("could not send object %s to remote client %s: %s",
                            _ids.short(data.object_id), _ids.short(self.client_id), e)
            else:
                self.wanted.discard(data.object_id)
        return op

    def landed(self, batch: node_pb2.ClientBatch) -> node_pb2.ClientBatch:
        """``batch`` from the client, ready for the state: a remote driver's large puts
        written into the store (as a local client writes them itself), its gets noted."""
        store = self._store
        if store is None:
            return batch
        for op in batch.ops:
            kind = op.WhichOneof("op")
            if kind == "get":
                self.wanted.update(op.get.object_ids)
            elif (kind == "put" and len(op.put.inline) > self._inline_max
                  and len(op.put.object_id) == OBJECT_ID_LEN):
                data = op.put
                path = store.path_for(data.object_id)
                try:
                    write_bytes(path, data.inline)
                except FileExistsError:
                    pass  # sent again: objects are immutable, the first copy stands
                except OSError as e:  # the store's file system is full: it stays in memory
                    logger.warning("kept the put of %s from remote client %s in memory: %s",
                                   _ids.short(data.object_id), _ids.short(self.client_id), e)
                    continue
                data.size, data.shm_path, data.inline = len(data.inline), path, b""
        return batch

    def close(self, reason: str = "") -> None:
        """End the stream after the ops already queued are written (with ``reason``: as an error)."""
        self.closed = True
        self.reason = self.reason or reason
        self.wake.set()


class Sessions:
    """The open Session streams of this node, by client id."""

    def __init__(self) -> None:
        self._conns: dict[bytes, Conn] = {}

    def add(self, conn: Conn) -> None:
        self._conns[conn.client_id] = conn

    def remove(self, conn: Conn) -> None:
        """Forget ``conn`` unless a newer stream of the same client replaced it."""
        if self._conns.get(conn.client_id) is conn:
            del self._conns[conn.client_id]

    def send(self, client_id: bytes, op: node_pb2.NodeOp) -> None:
        """Queue ``op`` for client ``client_id``; dropped when it is not connected."""
        conn = self._conns.get(client_id)
        if conn is not None:
            conn.send(op)

    def close_all(self, reason: str | None = None) -> None:
        """End every stream; with ``reason`` (the node was fenced), as an error that says it."""
        for conn in self._conns.values():
            conn.close(reason or "")

    def __len__(self) -> int:
        return len(self._conns)


# ---- client ops -> state events --------------------------------------------------------

OpHandler = Callable[["LocalScheduler", bytes, node_pb2.ClientOp], None]


def _submit(s: LocalScheduler, cid: bytes, op: node_pb2.ClientOp) -> None:
    spec = op.submit
    if not spec.owner_id:
        spec.owner_id = cid
    bad = spec_problem(spec)
    if bad:  # nothing is stored but the refusal, as each of its returns (the client waits on them)
        logger.warning("refused a malformed task from client %s: %s", _ids.short(cid), bad)
        err = InvalidRequestError(f"the node refused task {spec.name[:80]!r}: {bad}")
        blob = codec.serialize(err, error=True).to_bytes()
        for i in range(1, min(spec.num_returns, 16) + 1):
            s.put(cid, common_pb2.ObjectData(object_id=_ids.object_id(spec.task_id, i), inline=blob,
                                             size=len(blob)))
        return
    s.submit(cid, spec)


def _result(s: LocalScheduler, cid: bytes, op: node_pb2.ClientOp) -> None:
    s.result(cid, op.result)


def _get(s: LocalScheduler, cid: bytes, op: node_pb2.ClientOp) -> None:
    s.get(cid, op.get.object_ids)


def _refs(s: LocalScheduler, cid: bytes, op: node_pb2.ClientOp) -> None:
    s.update_refs(cid, op.refs.add, op.refs.remove)


def _put(s: LocalScheduler, cid: bytes, op: node_pb2.ClientOp) -> None:
    s.put(cid, op.put)


def _log(s: LocalScheduler, cid: bytes, op: node_pb2.ClientOp) -> None:
    s.log(op.log)


def _blocked(s: LocalScheduler, cid: bytes, op: node_pb2.ClientOp) -> None:
    s.blocked(cid, op.blocked)


def _cancel(s: LocalScheduler, cid: bytes, op: node_pb2.ClientOp) -> None:
    s.cancel(op.cancel.task_id, op.cancel.force, op.cancel.recursive)


def _mapped(s: LocalScheduler, cid: bytes, op: node_pb2.ClientOp) -> None:
    s.objects.mark_mapped(op.mapped.object_ids)


def _kill_actor(s: LocalScheduler, cid: bytes, op: node_pb2.ClientOp) -> None:
    s.kill_actor(op.kill_actor.actor_id, op.kill_actor.no_restart)


#: What each kind of client op (the ``ClientOp.op`` oneof) does to the state. A Hello
#: after the first op of a Session is not in the table: it is ignored with a warning.
OPS: dict[str, OpHandler] = {
    "submit": _submit, "result": _result, "get": _get, "refs": _refs, "put": _put,
    "log": _log, "blocked": _blocked, "cancel": _cancel, "kill_actor": _kill_actor,
    "mapped": _mapped,
}


def apply_ops(state: LocalScheduler, client_id: bytes, batch: node_pb2.ClientBatch) -> None:
    """Feed every op of ``batch`` from ``client_id`` to ``state``, in order."""
    for op in batch.ops:
        kind = op.WhichOneof("op")
        handler = OPS.get(kind) if kind is not None else None
        if handler is None:
            logger.warning("ignored op %r from client %s", kind, _ids.short(client_id))
            continue
        handler(state, client_id, op)
