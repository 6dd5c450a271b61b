"""What every placement policy shares: the ``Policy`` protocol and resource arithmetic.

``fits`` and ``EPSILON`` are ``runtime.protocol.resources``' (the one fit test, shared
with the node), re-exported here for the policies.

A policy is pure: given candidate nodes (alive, and able to hold the task at all), the
task's resource demand and where its inputs live, it picks one node and says why. It
never mutates the nodes; ``ClusterView.place`` does the bookkeeping.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from runtime.protocol.resources import EPSILON, fits

if TYPE_CHECKING:
    from runtime.scheduler.state import NodeView

__all__ = ["EPSILON", "Choice", "InputLike", "Policy", "fits", "main_resource", "remote_bytes", "slots"]

class InputLike(Protocol):
    """An input of a task: its size and the nodes holding a copy.

    ``runtime.protocol.scheduler_pb2.InputLocation`` and ``state.InputLocation`` both fit.
    """

    @property
    def size(self) -> int: ...

    @property
    def node_ids(self) -> Collection[bytes]: ...


@dataclass(frozen=True)
class Choice:
    """A policy's pick: the node, its estimated cost in seconds, and why, for logs and events."""

    node: NodeView
    cost: float
    why: str


class Policy(Protocol):
    """Picks one of ``candidates`` (never empty) for a task needing ``resources``."""

    name: str

    def choose(self, candidates: Sequence[NodeView], resources: Mapping[str, float],
               inputs: Sequence[InputLike]) -> Choice: ...


def main_resource(resources: Mapping[str, float]) -> str:
    """The resource that bounds how many such tasks a node runs side by side.

    ``GPU`` when the task asks for one, else ``CPU`` when it asks for CPU or for nothing
    in particular, else its first custom resource by name.
    """
    if resources.get("GPU", 0.0) > 0:
        return "GPU"
    if resources.get("CPU", 0.0) > 0:
        return "CPU"
    custom = sorted(k for k, v in resources.items() if v > 0)
    return custom[0] if custom else "CPU"


def slots(node: NodeView, resources: Mapping[str, float]) -> float:
    """How many tasks like this one ``node`` runs at once: capacity ÷ demand in the main
    resource, at least 1 (a task needing none of it, or a fraction of a GPU, counts so)."""
    key = main_resource(resources)
    total = node.total.get(key, 0.0)
    need = resources.get(key, 0.0)
    return max(1.0, total / need if need > 0 else total)


def remote_bytes(node_id: bytes, inputs: Sequence[InputLike]) -> int:
    """Bytes of ``inputs`` that ``node_id`` holds no copy of (they would be pulled)."""
    return sum(max(0, i.size) for i in inputs if node_id not in i.node_ids)
