"""The Nodes section: one block per node with its CPU, memory, object store and GPU use."""

from __future__ import annotations

import html

import ipywidgets as w

from runtime.state import NodeState
from widgets._close import close_tree
from widgets._meter import Meter
from widgets.render import format_bytes
from widgets.views import NodeView


def _meters(n: NodeState) -> list[tuple[str, float, str]]:
    """(name, fraction, text) for each bar a node shows."""
    out = []
    total, free = n.resources_total, n.resources_available
    cpus = total.get("CPU", 0.0)
    if cpus:
        used = cpus - free.get("CPU", 0.0)
        out.append(("CPU slots", used / cpus, f"{used:g}/{cpus:g} in use"))
    out.append(("CPU", n.cpu_percent / 100, f"{n.cpu_percent:.0f}% of the machine"))
    if n.memory_total:
        out.append(("memory", n.memory_used / n.memory_total,
                    f"{format_bytes(n.memory_used)}/{format_bytes(n.memory_total)}"))
    if n.store_capacity:
        out.append(("store", n.store_used / n.store_capacity,
                    f"{format_bytes(n.store_used)}/{format_bytes(n.store_capacity)}"))
    for g in n.gpus:
        mem = f" · {format_bytes(g.memory_used)}/{format_bytes(g.memory_total)}" if g.memory_total else ""
        out.append((f"GPU {g.index}", g.utilization / 100, f"{g.utilization:.0f}%{mem}"))
    gpus = total.get("GPU", 0.0)
    if gpus and not n.gpus:  # logical GPUs: only the reservation is known
        used = gpus - free.get("GPU", 0.0)
        out.append(("GPU slots", used / gpus, f"{used:g}/{gpus:g} in use"))
    return out


class NodeBlock(w.VBox):
    """One node: a header line and its meters, updated in place by ``show``."""

    def __init__(self) -> None:
        self.header = w.HTML()
        self.bars = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        self._names: tuple[str, ...] = ()
        super().__init__([self.header, self.bars], layout=w.Layout(margin="0 0 4px 0"))
        self.add_class("cellray-node")

    def show(self, view: NodeView) -> None:
        n = view.state
        status = ("<span style='color:#16a34a'>alive</span>" if n.alive else
                  f"<span style='color:#dc2626'>dead: {html.escape(n.death_cause or 'unknown cause')}</span>")
        self.header.value = (f"<b>node {view.index}</b> <code>{html.escape(view.label)}</code> · "
                             f"{html.escape(n.hostname)} · {html.escape(n.address)} · {status} · "
                             f"{n.num_workers} workers · queue {n.queue_length}")
        self.bars.layout.display = None if n.alive else "none"
        meters = _meters(n)
        names = tuple(m[0] for m in meters)
        if names != self._names:  # GPUs appeared, say: new bars, the others closed
            old = self.bars.children
            self.bars.children = [Meter(name) for name in names]
            for meter in old:
                close_tree(meter)
            self._names = names
        for meter, (_, fraction, text) in zip(self.bars.children, meters, strict=False):
            meter.set(fraction, text)


class NodesPanel(w.VBox):
    """Every node the cluster has known, in start order; blocks are reused across updates."""

    def __init__(self) -> None:
        self.title = w.HTML("<h4>Nodes</h4>")
        self.empty = w.HTML("<span class='cellray-muted'>no nodes yet</span>")
        self.list = w.VBox([self.empty])
        self._blocks: dict[str, NodeBlock] = {}
        super().__init__([self.title, self.list])
        self.add_class("cellray-nodes")

    def show(self, nodes: tuple[NodeView, ...]) -> None:
        ids = [v.state.node_id for v in nodes]
        gone = [self._blocks.pop(i) for i in set(self._blocks) - set(ids)]
        for v in nodes:
            block = self._blocks.get(v.state.node_id)
            if block is None:
                block = self._blocks[v.state.node_id] = NodeBlock()
            block.show(v)
        children = tuple(self._blocks[i] for i in ids) or (self.empty,)
        if tuple(self.list.children) != children:
            self.list.children = children
        for block in gone:
            close_tree(block)

    def _detached_widgets(self) -> list[w.Widget]:
        return [self.empty] if self.empty not in self.list.children else []

    def close(self) -> None:
        close_tree(self)
