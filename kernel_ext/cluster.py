"""``%cluster``'s actions on the runtime: start, attach, stop, and the status snapshot.

Each returns what happened as plain values for the magic to show; problems the user can
fix raise ``UsageError`` with the fix in the message.
"""

from __future__ import annotations

from dataclasses import dataclass

from IPython.core.error import UsageError

import runtime as rt
from kernel_ext.display import ClusterView
from runtime import state
from runtime.state import format_bytes

START_HINT = ("Start one with `%cluster start --cpus 4`, or attach to a running one with "
              "`%cluster attach HOST:PORT --token-file FILE`.")


@dataclass(frozen=True)
class Connected:
    """The outcome of ``start`` or ``attach``."""

    info: rt.ClusterInfo
    #: True when a connection existed already and was kept.
    reused: bool


def current() -> rt.ClusterInfo | None:
    """What this process is connected to (None when it is not)."""
    if not rt.is_initialized():
        return None
    return rt.init(ignore_reinit_error=True)


def start(*, nodes: int | None, cpus: float | None, gpus: float | None,
          resources: dict[str, float] | None, gcs_storage: str | None = None) -> Connected:
    """Start a local cluster (its GCS's tables in ``gcs_storage``), or keep the one this
    kernel is connected to."""
    info = current()
    if info is not None:
        return Connected(info, reused=True)
    try:
        info = rt.init(num_nodes=nodes or 1, num_cpus=cpus, num_gpus=gpus, resources=resources,
                       gcs_storage=gcs_storage, log_to_driver=False)
    except (ValueError, TypeError, rt.exceptions.ClusterError) as e:
        # Bad options, or a cluster process that died at start (ClusterStartError, whose
        # message holds the end of its log): the message says what to fix.
        raise UsageError(f"%cluster start: {e}") from None
    return Connected(info, reused=False)


def attach(address: str, token_file: str | None, bundle: str | None = None) -> Connected:
    """Connect to a running cluster (or keep the current connection); ``bundle`` is the
    join bundle of a TLS cluster (``rt.init``'s ``bundle=``)."""
    info = current()
    if info is not None:
        return Connected(info, reused=True)
    try:
        info = rt.init(address=address, token_file=token_file, bundle=bundle, log_to_driver=False)
    except (ConnectionError, PermissionError, OSError, ValueError, rt.exceptions.ClusterError) as e:
        # The runtime's messages already say what to check; add only what it was doing.
        raise UsageError(f"%cluster attach {address}: {e}") from None
    return Connected(info, reused=False)


def stop() -> rt.ClusterInfo | None:
    """Disconnect (stopping the cluster if this process started it); what it was connected to."""
    info = current()
    if info is not None:
        rt.shutdown()
    return info


def view() -> ClusterView:
    """A snapshot of the cluster for ``%cluster status``."""
    info = current()
    if info is None:
        raise UsageError("No cluster is running. " + START_HINT)
    return ClusterView(address=info.address, session_dir=info.session_dir,
                       started_here=info.started_here, nodes=state.list_nodes())


def describe(info: rt.ClusterInfo) -> str:
    """One line: where the cluster is and what it offers."""
    total = rt.cluster_resources()
    offers = ", ".join(f"{k} {format_bytes(v)}" if k == "memory" else f"{k} {v:g}"
                       for k, v in sorted(total.items())) or "no resources"
    nodes = sum(1 for n in rt.nodes() if n["Alive"])
    return f"{info.address} ({nodes} node{'s' if nodes != 1 else ''}; {offers})"
