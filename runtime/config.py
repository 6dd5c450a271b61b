"""Settings: defaults, validation, and the one environment prefix (CELLRAY_).

Precedence: explicit ``init()`` arguments, then ``CELLRAY_*`` environment variables, then
the defaults below. Bad values raise at once with the variable's name and what is accepted.

Every tuning constant of the runtime is a field here, so one place documents it and one
rule validates it; a daemon reads its settings once at start (``load()``), and a cluster
started by ``LocalCluster`` hands its settings to every child through the environment
(``Settings.to_env``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

#: The environment prefix of every setting.
ENV_PREFIX = "CELLRAY_"

#: Objects whose serialized size is below this travel inline in messages (the default of
#: ``Settings.inline_threshold``).
INLINE_THRESHOLD = 100 * 1024


@dataclass(frozen=True)
class Settings:
    """Cluster settings. Each field can be set by ``CELLRAY_<NAME>`` (upper case)."""

    # ---- cluster shape and liveness ----
    #: Interval between node heartbeats to the GCS, in milliseconds.
    heartbeat_ms: int = 500
    #: A node is marked dead after this long without a heartbeat, in milliseconds.
    node_timeout_ms: int = 10_000
    #: Number of GCS shards.
    gcs_shards: int = 4
    #: How often node managers send task events to the GCS, in milliseconds.
    event_flush_ms: int = 100
    #: Seconds to wait for a cluster process to report ready.
    start_timeout_s: float = 60.0
    #: Global scheduler replicas a local cluster starts.
    global_schedulers: int = 2
    #: Host the cluster's servers bind to.
    host: str = "127.0.0.1"

    # ---- node: local scheduling ----
    #: Local queue length over which tasks that cannot start now spill (0: twice the CPUs, min 4).
    spill_threshold: int = 0
    #: Most times one task is moved between nodes.
    max_spills: int = 2
    #: Most tasks sent ahead to one busy worker (pipelining; 1 turns it off).
    pipeline_depth: int = 4
    #: Most tasks stacked in one blocked worker (each costs Python stack frames).
    max_inline_depth: int = 48
    #: Most workers starting at once (0: the node's CPUs, at least 2).
    max_starting_workers: int = 0
    #: Idle workers beyond one per CPU are stopped after this many seconds.
    idle_worker_s: float = 10.0

    # ---- objects ----
    #: Objects whose serialized size is below this many bytes travel inline in messages.
    inline_threshold: int = INLINE_THRESHOLD
    #: Bytes per chunk when a node pulls an object from another.
    pull_chunk_bytes: int = 4 * 1024 * 1024
    #: Default object store size, as a fraction of the machine's memory ...
    store_memory_fraction: float = 0.3
    #: ... and at most this fraction of /dev/shm.
    store_shm_fraction: float = 0.8
    #: Objects up to this many bytes are read with read() rather than mapped.
    shm_read_limit_bytes: int = 128 * 1024

    # ---- RPC ----
    #: Deadline of one control RPC (GCS calls, reports between nodes), in seconds.
    rpc_timeout_s: float = 30.0
    #: Times a node retries reporting a task's results to the task's home node.
    report_retries: int = 5
    #: Largest gRPC message, in bytes.
    max_message_bytes: int = 512 * 1024 * 1024
    #: Functions a GCS client keeps decoded (LRU).
    function_cache_size: int = 1024
    #: Changes queued for one slow GCS subscriber before it is dropped.
    subscriber_queue_size: int = 10_000

    # ---- daemons ----
    #: Seconds a stopping server lets in-flight calls finish.
    stop_grace_s: float = 1.0
    #: Seconds a stopping global scheduler waits to deregister from the GCS.
    deregister_timeout_s: float = 2.0
    #: How often a daemon checks that its parent is still alive, in seconds.
    parent_check_s: float = 1.0

    # ---- global scheduler (locality policy) ----
    #: Average task time assumed for queue wait estimates, in seconds.
    task_time_s: float = 0.010
    #: Bandwidth between nodes assumed for transfer estimates, in bytes per second.
    bandwidth: float = 1e9

    # ---- workers and drivers ----
    #: Cancels remembered for tasks a worker was given but has not started.
    cancelled_early_max: int = 1024
    #: Deadline of one ``rt.state`` query, in seconds.
    query_timeout_s: float = 60.0

    def validate(self) -> Settings:
        """Check every field; raise ``ValueError`` naming the variable and what is accepted."""
        for f in fields(self):
            value = getattr(self, f.name)
            kind = type(f.default)
            if kind is bool or kind is str:
                continue
            if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"setting {f.name} (env {ENV_PREFIX}{f.name.upper()}) must be "
                                 f"an integer, got {value!r}")
            if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise ValueError(f"setting {f.name} (env {ENV_PREFIX}{f.name.upper()}) must be "
                                 f"a number, got {value!r}")
        for name, low in _MINIMA.items():
            value = getattr(self, name)
            if value < low:
                raise ValueError(f"setting {name} (env {ENV_PREFIX}{name.upper()}) must be "
                                 f">= {low}, got {value!r}")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise ValueError(f"setting {name} (env {ENV_PREFIX}{name.upper()}) must be > 0, "
                                 f"got {getattr(self, name)!r}")
        for name in ("store_memory_fraction", "store_shm_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"setting {name} (env {ENV_PREFIX}{name.upper()}) must be in "
                                 f"(0, 1], got {getattr(self, name)!r}")
        return self

    def to_env(self) -> dict[str, str]:
        """Every field as a ``CELLRAY_*`` variable, for a child process to ``load()``."""
        return {f"{ENV_PREFIX}{f.name.upper()}": str(getattr(self, f.name)) for f in fields(self)}


#: Smallest accepted value of integer fields.
_MINIMA: dict[str, int] = {
    "heartbeat_ms": 10, "node_timeout_ms": 50, "gcs_shards": 1, "event_flush_ms": 1,
    "spill_threshold": 0, "global_schedulers": 0, "max_spills": 0, "pipeline_depth": 1,
    "max_inline_depth": 1, "max_starting_workers": 0, "inline_threshold": 0,
    "pull_chunk_bytes": 1024, "shm_read_limit_bytes": 0, "report_retries": 1,
    "max_message_bytes": 1024 * 1024, "function_cache_size": 1, "subscriber_queue_size": 1,
    "cancelled_early_max": 1,
}

#: Fields that must be > 0.
_POSITIVE = ("start_timeout_s", "idle_worker_s", "rpc_timeout_s", "stop_grace_s",
             "deregister_timeout_s", "parent_check_s", "task_time_s", "bandwidth",
             "query_timeout_s")


def load(**overrides: Any) -> Settings:
    """Settings from the environment, with ``overrides`` (non-None) on top, validated."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env = os.environ.get(f"{ENV_PREFIX}{f.name.upper()}")
        if env is None:
            continue
        kind = type(f.default)
        try:
            values[f.name] = kind(env)
        except ValueError:
            raise ValueError(f"environment variable {ENV_PREFIX}{f.name.upper()}={env!r} is not a "
                             f"valid {kind.__name__}") from None
    unknown = set(overrides) - {f.name for f in fields(Settings)}
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(sorted(unknown))}; the settings are "
                        f"{', '.join(f.name for f in fields(Settings))}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(Settings(), **values).validate()
