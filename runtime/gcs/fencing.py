"""Fencing: a node the GCS declared dead never comes back under its id. Pure.

A node is declared dead when it stays silent past the heartbeat timeout (or unregisters).
Its tasks then run again elsewhere, started by their home nodes, and its actors restart.
If its process was only paused (SIGSTOP, a long GC pause, a network cut) it may wake up
and talk again; taken back under its old id, it would run tasks that run elsewhere
already and deliver their results a second time. So the GCS keeps the row of a dead node
(``alive`` false, ``death_cause``, ``death_time``: as durable as the tables are) and
refuses a heartbeat or a registration under that id with ``NodeDiedError``, which the
service sends as FAILED_PRECONDITION with the trailer ``runtime.rpc.errors.FENCED_NODE``
(the client side turns it back into ``NodeDiedError``).

The node that gets it is *fenced*: it stops every worker it runs, drops its state and
rejoins the cluster as a new node, under a new id, with nothing running
(``runtime.node.__main__``). Its peers never take the dead id back either
(``Spilling.peer_alive``) and drop what it still sends under it.

A node the GCS does not know at all (a head restarted without its tables) is not fenced:
its heartbeat answers ``known=False`` and it registers again under its id.
"""

from __future__ import annotations

import datetime

from runtime._ids import short
from runtime.exceptions import NodeDiedError
from runtime.protocol import gcs_pb2

__all__ = ["fenced_error", "refuse_dead"]


def fenced_error(row: gcs_pb2.NodeRow) -> NodeDiedError:
    """The error that refuses a call of the dead node ``row`` (``node_id`` and ``address`` set).

    Examples
    --------
    >>> row = gcs_pb2.NodeRow(node_id=bytes(16), address="10.0.0.5:7001", death_cause="drained")
    >>> str(fenced_error(row))
    'node 000000000000 (10.0.0.5:7001) was declared dead (drained): it must rejoin under a new id'
    """
    when = ""
    if row.death_time:
        when = " at " + datetime.datetime.fromtimestamp(row.death_time).isoformat(" ", "seconds")
    return NodeDiedError(f"node {short(row.node_id)} ({row.address or 'no address'}) was declared dead"
                         f"{when} ({row.death_cause or 'no cause recorded'}): it must rejoin under a new id",
                         node_id=row.node_id.hex(), address=row.address)


def refuse_dead(row: gcs_pb2.NodeRow | None) -> None:
    """Raise ``fenced_error(row)`` when ``row`` is the row of a node declared dead.

    Raises
    ------
    NodeDiedError
        The node was declared dead: nothing it sends under its id is taken any more.
    """
    if row is not None and not row.alive:
        raise fenced_error(row)
