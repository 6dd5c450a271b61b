"""What ``bench/simulate.py`` prints: one table row per run, and a conclusion drawn from
the runs (does throughput grow linearly with nodes and with replicas, where does it stop,
and which component's cost stops it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from runtime.sim.metrics import SimResult

__all__ = ["HEADER", "conclude", "row"]

HEADER = (f"{'nodes':>5} {'repl':>4} {'tasks':>7} {'spill':>5} {'tasks/s':>8} {'offered':>8} "
          f"{'spilled':>8} {'p50_ms':>7} {'p99_ms':>8} {'node':>5} {'repl':>5} {'gcs':>5} "
          f"{'gcs_lag':>8} {'place_us':>8}  bottleneck")

#: Growth counts as linear while a size carries at least this share of what the smallest
#: size carried of its offered load.
LINEAR = 0.9


def _ms(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds * 1e3:.2f}"


def row(r: SimResult) -> str:
    """One line of the table: ``tasks/s`` and ``spilled`` are tasks done per second in the
    steady window (all, and those that were spilled); busy shares are the busiest server
    of each kind."""
    loads = r.loads
    place = r.cost("replica", "place")
    return (f"{r.nodes:>5} {r.replicas:>4} {r.tasks:>7} {r.spilled_share:>5.0%} {r.throughput:>8.0f} "
            f"{r.offered:>8.0f} {r.spilled_throughput:>8.0f} {_ms(r.latency_p50_s):>7} "
            f"{_ms(r.latency_p99_s):>8} {loads['node'].max_util:>5.0%} {loads['replica'].max_util:>5.0%} "
            f"{loads['gcs'].max_util:>5.0%} {r.gcs_lag_s:>7.3f}s "
            f"{(place * 1e6 if not math.isnan(place) else 0):>8.0f}  {r.bottleneck()}")


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.1f} ms"


def _carried(r: SimResult) -> float:
    return r.throughput / r.offered if r.offered else 1.0


def _place_cost(results: Sequence[SimResult], nodes: int) -> float:
    """Mean charged cost of one placement over the runs with ``nodes`` nodes."""
    costs = [r.cost("replica", "place") for r in results if r.nodes == nodes]
    costs = [c for c in costs if not math.isnan(c)]
    return sum(costs) / len(costs) if costs else math.nan


def _why(r: SimResult, results: Sequence[SimResult]) -> str:
    """Why the run ``r`` carries what it carries."""
    neck = r.bottleneck()
    if neck.startswith("gs-"):
        place, smallest = r.cost("replica", "place"), min(x.nodes for x in results)
        grew = (f" against {_us(_place_cost(results, smallest))} at {smallest} nodes"
                if smallest < r.nodes else "")
        return (f"the replicas are saturated (busiest {r.loads['replica'].max_util:.0%} busy): the hot nodes "
                f"spill {r.spill_rate:,.0f} tasks/s, but a placement costs {_us(place)} at {r.nodes} nodes"
                f"{grew} (the policy scores a sample of Settings.placement_candidates nodes, plus the "
                f"nodes holding the inputs), so {r.replicas} replica(s) place at most "
                f"~{r.replicas / place:,.0f}/s; placing them all would take "
                f"~{math.ceil(r.spill_rate * place)} replicas. The other spills wait at their home, SPILLED, "
                "and do not run there either")
    if neck.startswith("node-"):
        node = r.loads["node"]
        return (f"node manager {neck} is saturated ({node.max_util:.0%} busy; a submit there costs "
                f"{_us(node.busiest_costs.get('submit', math.nan))})")
    if _carried(r) >= 0.9:
        return f"the offered load is carried, {_carried(r):.0%} of it"
    return (f"{_carried(r):.0%} of the offered load is carried, though no node or replica is saturated "
            "(work still queued or in flight at the window's end)")


def _nodes_lines(results: Sequence[SimResult]) -> list[str]:
    out = []
    for repl in sorted({r.replicas for r in results}):
        runs = sorted((r for r in results if r.replicas == repl), key=lambda r: r.nodes)
        if len(runs) < 2:
            continue
        first, last = runs[0], runs[-1]
        gain, ideal = last.throughput / max(first.throughput, 1e-9), last.nodes / first.nodes
        line = (f"- {repl} replica(s): {' -> '.join(f'{r.throughput:,.0f}' for r in runs)} tasks/s "
                f"({' -> '.join(f'{_carried(r):.0%}' for r in runs)} of the offered load) for "
                f"{' -> '.join(str(r.nodes) for r in runs)} nodes: {gain:.1f}x for {ideal:.0f}x the nodes.")
        # Linear: each size carries (nearly) the share of its load that the smallest did.
        short = next((r for r in runs[1:] if _carried(r) < LINEAR * _carried(first)), None)
        if short is None:
            line += " Close to linear throughout."
        else:
            below = max(r.nodes for r in runs if r.nodes < short.nodes)
            line += f" Linear up to {below} nodes; at {short.nodes}: {_why(short, results)}."
        out.append(line)
    return out


def _replicas_lines(results: Sequence[SimResult]) -> list[str]:
    out = []
    for n in sorted({r.nodes for r in results}):
        runs = sorted((r for r in results if r.nodes == n), key=lambda r: r.replicas)
        if len(runs) < 2:
            continue
        first, last = runs[0], runs[-1]
        line = (f"- {n} nodes, {' -> '.join(str(r.replicas) for r in runs)} replicas: spilled tasks done "
                f"{' -> '.join(f'{r.spilled_throughput:,.0f}' for r in runs)}/s of ~{last.spill_rate:,.0f}/s "
                f"spilled; all tasks {first.throughput:,.0f} -> {last.throughput:,.0f}/s.")
        saturated = [r for r in runs if r.bottleneck().startswith("gs-")]
        if not saturated:
            line += " One replica already places every spill: more add nothing."
        elif len(saturated) == len(runs):
            gain = last.spilled_throughput / max(first.spilled_throughput, 1e-9)
            line += (f" Placements grow {gain:.1f}x for {last.replicas / first.replicas:.0f}x the replicas "
                     f"(close to linear) and never catch up: {_why(last, results)}.")
        else:
            enough = next(r for r in runs if not r.bottleneck().startswith("gs-"))
            line += (f" Growth stops at {enough.replicas} replicas, which place every spill: "
                     f"{_why(enough, results)}.")
        out.append(line)
    return out


def _node_line(results: Sequence[SimResult]) -> str:
    sizes = sorted({r.nodes for r in results})
    busiest = [max((r for r in results if r.nodes == n), key=lambda r: r.loads["node"].max_util)
               for n in sizes]
    parts = ", ".join(f"{r.loads['node'].max_util:.0%} at {r.nodes} ({r.loads['node'].busiest}: a submit "
                      f"{_us(r.loads['node'].busiest_costs.get('submit', math.nan))})" for r in busiest)
    return (f"Node managers: the busiest (a hot node) is busy {parts}. A spill decision looks at a sample "
            "of at most 16 peers' last rows, so a submit costs about the same at any size; nodes are "
            f"{busiest[-1].loads['node'].mean_util:.0%} busy on average at {busiest[-1].nodes}.")


def _gcs_line(results: Sequence[SimResult]) -> str:
    big = max(results, key=lambda r: (r.nodes, r.replicas))
    gcs = big.loads["gcs"]
    batches = gcs.call_counts.get("report_events", 0)
    per_event = gcs.call_costs.get("report_events", 0.0) * batches / max(1, big.events_applied)
    settled = [r for r in results if r.complete or r.loads["gcs"].max_util < 0.9] or list(results)
    calm = min(settled, key=lambda r: r.nodes)
    per_task_events = calm.events_applied / max(1, calm.done)
    capacity = 1 / (per_event * per_task_events) if per_event > 0 else math.inf
    beat = gcs.call_costs.get("heartbeat", 0.0) + gcs.call_costs.get("publish", 0.0)
    beats_per_s = big.nodes * (big.heartbeats_per_node_s or 0.0)
    sizes = sorted({r.nodes for r in results})
    util = {n: max(r.loads["gcs"].max_util for r in results if r.nodes == n) for n in sizes}
    lag = {n: max(r.gcs_lag_s for r in results if r.nodes == n) for n in sizes}
    busy = ", ".join(f"{util[n]:.0%} at {n} nodes (calls waiting up to {lag[n]:.2f} s)" for n in sizes)
    saturated = [n for n in sizes if util[n] >= 0.9]
    where = (f"It is busy {busy}: saturated from {saturated[0]} nodes on" if saturated
             else f"It is busy {busy}: it keeps up")
    return (f"GCS ({big.gcs_processes} process(es)): it applies a task event in ~{_us(per_event)} and a task "
            f"makes ~{per_task_events:.1f} events, so it takes at most ~{capacity:,.0f} tasks/s of events. "
            f"A heartbeat costs {_us(beat)} at {big.nodes} nodes, its row published to {big.replicas} "
            f"replica(s) and every node (nodes follow the nodes table): {beats_per_s:,.0f} heartbeats/s "
            f"need {beats_per_s * beat:.2f} s of GCS time per second on their own. {where}. "
            "Tasks do not wait for it (events are batched off the task's path), but the task table, "
            "the dashboard and the heartbeat rows that replicas and nodes decide on fall behind that "
            "much; one GCS process per shard (--gcs-processes, the paper's design) spreads the events, "
            "not the fan-out of every heartbeat to every node.")


def conclude(results: Sequence[SimResult]) -> str:
    """The closing paragraphs: growth with nodes, with replicas, the node managers, the GCS."""
    if not results:
        return "No runs."
    lines = [("Against nodes (each node's driver offers the same load, so linear growth carries "
              "the same share of it at every size):")]
    lines += _nodes_lines(results) or ["- (one size only)"]
    lines.append("Against replicas (only spilled tasks reach a replica):")
    lines += _replicas_lines(results) or ["- (one replica count only)"]
    lines.append(_node_line(results))
    lines.append(_gcs_line(results))
    return "\n".join(lines)
