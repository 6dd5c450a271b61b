"""A cluster's state as ``cellray status`` shows it: read from the GCS, drawn as a table.

``fetch`` asks the GCS (one ping and a few table reads); ``format_status`` is pure, so the
table is tested without a cluster::

    cluster 127.0.0.1:6380  (GCS pid 4120, 4 shards, session /tmp/cellray/session_...)
    storage: sqlite:///tmp/cellray/session_.../gcs.db (cluster id 12fe42591709); GCS restarts: 1
    nodes: 1 alive
    node          address          alive  resources (free/total)  queue  object store        workers
    3f2a9c01d2e4  127.0.0.1:40211  yes    CPU 2/2                 0      0 B / 1.2 GiB       2
    jobs: 3 (1 running)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.cluster.restarts import RESTARTS_KEY, RestartCounts
from runtime.gcs.client import GcsClient
from runtime.protocol import gcs_pb2
from runtime.protocol.bundles import is_bundle_resource
from runtime.state import format_bytes

__all__ = ["ClusterStatus", "NodeStatus", "fetch", "format_bytes", "format_head", "format_status"]


@dataclass(frozen=True)
class NodeStatus:
    """One node's row, as of its latest heartbeat."""

    node_id: str  #: hex id
    address: str  #: host:port of its node manager
    alive: bool
    death_cause: str  #: why the GCS holds it dead ("" while alive)
    total: dict[str, float] = field(default_factory=dict)
    available: dict[str, float] = field(default_factory=dict)
    queue_length: int = 0
    store_used: int = 0  #: bytes
    store_capacity: int = 0  #: bytes
    workers: int = 0
    start_time: float = 0.0
    #: (index, name, utilization %, memory used, memory total) per GPU, live from NVML.
    gpus: tuple[tuple[int, str, float, int, int], ...] = ()


@dataclass(frozen=True)
class ClusterStatus:
    """What the GCS at ``address`` reports."""

    address: str
    session_dir: str
    gcs_pid: int
    num_shards: int
    nodes: list[NodeStatus]
    jobs_total: int
    jobs_running: int
    #: Placement groups by state (``{"CREATED": 2, "PENDING": 1}``), removed ones left out.
    placement_groups: dict[str, int] = field(default_factory=dict)
    #: Where the GCS keeps its tables: "memory", "sqlite:///path", "redis://h:p,h:p"
    #: ("" from a GCS too old to say).
    storage: str = ""
    #: The cluster's id (the same after a GCS restart from durable storage).
    cluster_id: str = ""
    #: What the head restarted so far, and what it no longer restarts.
    restarts: RestartCounts = field(default_factory=RestartCounts)


def _node(row: gcs_pb2.NodeRow) -> NodeStatus:
    load = row.load
    return NodeStatus(node_id=row.node_id.hex(), address=row.address, alive=row.alive,
                      death_cause=row.death_cause, total=dict(load.total),
                      available=dict(load.available), queue_length=load.queue_length,
                      store_used=load.store_used, store_capacity=load.store_capacity,
                      workers=load.num_workers, start_time=row.start_time,
                      gpus=tuple((g.index, g.name, g.utilization, g.memory_used, g.memory_total)
                                 for g in load.gpus))


async def fetch(address: str, token: str, timeout: float = 5.0) -> ClusterStatus:
    """Read the cluster's status from the GCS at ``address``.

    Raises what ``GcsClient`` raises: ``ConnectionLostError`` when nothing answers there,
    ``PermissionError`` for a wrong token, ``TimeoutError`` after ``timeout`` seconds.
    """
    async with GcsClient(address, token, timeout=timeout) as gcs:
        ping = await gcs.ping()
        restarts = RestartCounts.decode(await gcs.get_entry("kv", RESTARTS_KEY))
        nodes = [_node(gcs_pb2.NodeRow.FromString(v)) for _, v in await gcs.list_table("nodes")]
        jobs = [gcs_pb2.JobRow.FromString(v) for _, v in await gcs.list_table("jobs")]
        groups: dict[str, int] = {}
        for _, v in await gcs.list_table("placement_groups"):
            group = gcs_pb2.PlacementGroupRow.FromString(v)
            if group.state != "REMOVED":
                groups[group.state] = groups.get(group.state, 0) + 1
    nodes.sort(key=lambda n: (not n.alive, n.start_time, n.node_id))
    return ClusterStatus(address=address, session_dir=ping.session_dir, gcs_pid=ping.pid,
                         num_shards=ping.num_shards, nodes=nodes, jobs_total=len(jobs),
                         jobs_running=sum(1 for j in jobs if j.alive), placement_groups=groups,
                         storage=ping.storage, cluster_id=ping.cluster_id, restarts=restarts)




def _num(x: float) -> str:
    return f"{x:g}"


def _resources(node: NodeStatus) -> str:
    # CPU and GPU first, then custom resources by name; not those of placement-group bundles.
    names = sorted((k for k in node.total if not is_bundle_resource(k)),
                   key=lambda k: ({"CPU": 0, "GPU": 1}.get(k, 2), k))
    def amount(k: str, v: float) -> str:
        return format_bytes(int(v)) if k == "memory" else _num(v)
    return ", ".join(f"{k} {amount(k, node.available.get(k, 0.0))}/{amount(k, node.total[k])}"
                     for k in names) or "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in [header, *rows]]


def format_head(status: ClusterStatus) -> list[str]:
    """The storage line (backend, cluster id, restarts), and one line per process the head
    no longer restarts."""
    r = status.restarts
    cluster = f" (cluster id {status.cluster_id[:12]})" if status.cluster_id else ""
    line = f"storage: {status.storage or 'unknown'}{cluster}; GCS restarts: {r.gcs}"
    if r.schedulers:
        line += "; global scheduler restarts: " + ", ".join(
            f"{name} {n}" for name, n in sorted(r.schedulers.items()))
    return [line] + [f"not restarted: {'the GCS' if name == 'gcs' else name}: {why}"
                     for name, why in sorted(r.not_restarted.items())]


def format_status(status: ClusterStatus) -> str:
    """The status as text: a header line, the storage, one row per node (live ones first),
    the jobs."""
    live = sum(1 for n in status.nodes if n.alive)
    dead = len(status.nodes) - live
    lines = [(f"cluster {status.address}  (GCS pid {status.gcs_pid}, {status.num_shards} shards, "
              f"session {status.session_dir})"),
             *format_head(status),
             f"nodes: {live} alive" + (f", {dead} dead" if dead else "")]
    rows = []
    for n in status.nodes:
        alive = "yes" if n.alive else f"no ({n.death_cause or 'no heartbeat'})"
        store = f"{format_bytes(n.store_used)} / {format_bytes(n.store_capacity)}"
        rows.append([n.node_id[:12], n.address, alive, _resources(n), str(n.queue_length), store,
                     str(n.workers)])
    if rows:
        header = ["node", "address", "alive", "resources (free/total)", "queue",
                  "object store (used/capacity)", "workers"]
        lines += _table(header, rows)
    for n in status.nodes:
        for index, name, util, used, total in n.gpus:
            memory = f", memory {format_bytes(used)} / {format_bytes(total)}" if total else ""
            lines.append(f"  {n.node_id[:12]} GPU {index}: {name}, {util:.0f}% busy{memory}")
    lines.append(f"jobs: {status.jobs_total} ({status.jobs_running} running)")
    if status.placement_groups:
        groups = status.placement_groups
        lines.append(f"placement groups: {sum(groups.values())} ("
                     + ", ".join(f"{n} {s.lower()}" for s, n in sorted(groups.items())) + ")")
    return "\n".join(lines)
