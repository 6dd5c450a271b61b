"""A discrete-event simulation of a cellray cluster that runs the real scheduling code.

It shows what one machine cannot: how scheduling throughput and latency grow to 1,000
nodes and several global-scheduler replicas, and where they stop growing. Nothing here
re-implements a decision: every node is the real ``LocalScheduler``, every replica the
real ``ClusterView`` and ``PlacementAttempts``, the GCS the real ``GcsState``. They are
driven in one process on simulated time, and each call is charged the CPU time it really
took here, so the limits found are those of the real code.

Layering, bottom up::

    loop.py      EventLoop (simulated time), Server (one process: a FIFO, charged per
                 call), cost models, Network (delays per message, FIFO per link)
    adapter.py   the only module that touches the real state machines and protocol
                 messages: when their signatures change, follow them here
    workload.py  what the drivers submit; metrics.py: each task's story and the figures
    node.py      a node manager: LocalScheduler + fake workers + driver, actions carried
                 out in simulated time
    replica.py   a global-scheduler replica; gcs.py: the GCS process(es)
    cluster.py   builds a cluster from a SimConfig and runs it: simulate(config)
    report.py    the table and the conclusion bench/simulate.py prints

Examples
--------
>>> from runtime.sim import FixedCost, SimConfig, Workload, simulate
>>> r = simulate(SimConfig(nodes=4, replicas=1, workload=Workload(tasks_per_node=20),
...                        cost=FixedCost(), publish_s=1e-6))
>>> r.done == r.tasks
True
"""

from __future__ import annotations

from runtime.sim.cluster import SimCluster, SimConfig, simulate
from runtime.sim.loop import FixedCost, MeasuredCost
from runtime.sim.metrics import SimResult
from runtime.sim.workload import Workload

__all__ = ["FixedCost", "MeasuredCost", "SimCluster", "SimConfig", "SimResult", "Workload", "simulate"]
