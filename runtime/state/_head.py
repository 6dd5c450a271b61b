"""``get_head()``: the cluster's head: its GCS, where the GCS keeps its tables, its restarts.

Part of the ``runtime.state`` package: import these names from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime.api import _context
from runtime.cluster.restarts import RESTARTS_KEY, RestartCounts
from runtime.protocol import gcs_pb2
from runtime.state._queries import _query

if TYPE_CHECKING:
    from runtime.gcs.client import GcsClient


@dataclass(frozen=True)
class HeadState:
    """The head of the cluster, as its GCS reports it.

    Attributes
    ----------
    address : str
        ``host:port`` of the GCS (the same after a restart: the head restarts it there).
    gcs_pid : int
        Process id of the GCS running now (a restart changes it).
    num_shards : int
        GCS shards.
    session_dir : str
        The cluster's session directory on the head's machine (logs, token).
    storage : str
        Where the GCS keeps its tables: ``"memory"`` (lost when the GCS dies),
        ``"sqlite:///path/gcs.db"`` or ``"redis://host:port,..."``; ``""`` from a GCS too
        old to say.
    cluster_id : str
        The cluster's id: a GCS restarted from durable storage keeps it; one restarted
        in memory is a new cluster, with a new id.
    gcs_restarts : int
        Times the head restarted the GCS since the cluster started.
    scheduler_restarts : dict[str, int]
        Times the head restarted each global scheduler replica, by name (``gs-0``...).
    not_restarted : dict[str, str]
        Processes the head no longer restarts (``"gcs"``, ``"gs-0"``), and why.
    """

    address: str
    gcs_pid: int
    num_shards: int
    session_dir: str
    storage: str
    cluster_id: str
    gcs_restarts: int = 0
    scheduler_restarts: dict[str, int] = field(default_factory=dict)
    not_restarted: dict[str, str] = field(default_factory=dict)

    @property
    def durable(self) -> bool:
        """True when the GCS's tables survive its restart (any backend but ``memory``)."""
        return bool(self.storage) and self.storage != "memory"

    def summary(self) -> str:
        """One line: ``storage sqlite:///.../gcs.db · GCS restarts 1``."""
        line = f"storage {self.storage or 'unknown'} · GCS restarts {self.gcs_restarts}"
        scheduler = sum(self.scheduler_restarts.values())
        return line + (f" · scheduler restarts {scheduler}" if scheduler else "")


def get_head(timeout: float | None = None) -> HeadState:
    """The cluster's head: GCS address and pid, storage backend, cluster id, restarts.

    One round trip to the GCS. ``timeout`` (seconds) bounds it; None uses the queries'
    default. Raises what the other queries raise (``ConnectionLostError`` when the GCS
    does not answer, ``ClientClosedError`` after ``runtime.shutdown()``).

    Examples
    --------
    >>> head = state.get_head()                                 # doctest: +SKIP
    >>> head.storage, head.gcs_restarts                         # doctest: +SKIP
    ('sqlite:///tmp/cellray/session_.../gcs.db', 0)
    """
    async def ask(gcs: GcsClient) -> tuple[str, gcs_pb2.PingReply, bytes | None]:
        ping = await gcs.ping()
        return gcs.address, ping, await gcs.get_entry("kv", RESTARTS_KEY)

    address, ping, raw = _query(ask, timeout)
    counts = RestartCounts.decode(raw)
    return HeadState(address=address, gcs_pid=ping.pid, num_shards=ping.num_shards,
                     session_dir=ping.session_dir, storage=ping.storage, cluster_id=ping.cluster_id,
                     gcs_restarts=counts.gcs, scheduler_restarts=dict(counts.schedulers),
                     not_restarted=dict(counts.not_restarted))


def gcs_outage() -> float | None:
    """Seconds this process has been unable to reach the GCS, or None while it answers (or
    when not connected). No round trip: what this process's GCS client saw last. The
    dashboard shows it as "GCS reconnecting…"."""
    client = _context.peek()
    gcs = client.gcs if client is not None else None
    if gcs is None or gcs.link.outage.since is None:
        return None
    return gcs.link.outage.lasted()
