"""Settings: defaults, validation, and the one environment prefix (CELLRAY_).

Precedence: explicit ``init()`` arguments, then ``CELLRAY_*`` environment variables, then
the defaults below. Bad values raise ``ConfigError`` (a ``ValueError``) at once, with the
variable's name and what is accepted: a ``Settings`` validates itself whenever it is built
(also by ``dataclasses.replace``), field by field and then the rules between fields.

Every tuning constant of the runtime is a field here, so one place documents it and one
rule validates it; a daemon reads its settings once at start (``load()``), and a cluster
started by ``LocalCluster`` hands its settings to every child through the environment
(``Settings.to_env``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

from runtime.exceptions import ConfigError, UnknownSettingError
from runtime.gcs.storage_url import storage_problem

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
    #: Number of GCS shards (with Redis: one per server, whatever this says).
    gcs_shards: int = 4
    #: A bundle held this long (in milliseconds) is checked against the GCS's placement groups,
    #: and released when no group places it on this node (its group is gone or placed elsewhere).
    bundle_check_ms: int = 5_000
    #: How often node managers send task events to the GCS, in milliseconds.
    event_flush_ms: int = 100
    #: Seconds to wait for a cluster process to report ready.
    start_timeout_s: float = 60.0
    #: Global scheduler replicas a local cluster starts.
    global_schedulers: int = 2
    #: Host the cluster's servers bind to.
    host: str = "127.0.0.1"
    #: Directory of this process's TLS files (``ca.pem``, ``node.pem``, ``node.key``;
    #: ``runtime/_tls.py``): every server and channel then uses mutual TLS with them. Empty:
    #: plaintext, which servers accept on loopback addresses only unless ``insecure``.
    tls_dir: str = ""
    #: 1 lets servers bind a non-loopback address without TLS (with a warning); 0 makes
    #: them refuse to.
    insecure: int = 0

    # ---- GCS storage (runtime/gcs/storage_open.py) ----
    #: Where the GCS keeps its tables: ``memory`` (gone when the GCS stops), ``sqlite`` (the
    #: file gcs.db in the session directory), ``sqlite:///abs/path.db``, or
    #: ``redis://host:port,host:port`` (one shard on each server, in order).
    gcs_storage: str = "sqlite"
    #: Local redis-server processes the GCS starts and owns, its tables in them (0: none; > 0
    #: takes the place of the default ``sqlite``).
    redis_shards: int = 0
    #: Batch window of the persistent backends, in milliseconds: writes are saved in one
    #: transaction per window, and a GCS killed loses at most the writes of the last one.
    gcs_storage_flush_ms: int = 5
    #: A batch is saved at once, before its window ends, when this many rows wait.
    gcs_storage_batch_rows: int = 5000
    #: Seconds the GCS's storage may stay unreachable (Redis down) before the GCS exits; also
    #: how long a GCS waits for a database still locked by one that is stopping.
    gcs_storage_timeout_s: float = 30.0

    # ---- node: local scheduling ----
    #: Local queue length over which tasks that cannot start now spill (0: twice the CPUs, min 4).
    spill_threshold: int = 0
    #: Most times one task is moved between nodes.
    max_spills: int = 2
    #: Most times an actor's creation moves on from a node that cannot start it (actors hold
    #: their resources for life, so one waiting on a full node might wait forever).
    max_actor_spills: int = 8
    #: Most tasks sent ahead to one busy worker (pipelining; 1 turns it off).
    pipeline_depth: int = 4
    #: Most tasks stacked in one blocked worker (each costs Python stack frames).
    max_inline_depth: int = 48
    #: Most workers starting at once (0: the node's CPUs, at least 2).
    max_starting_workers: int = 0
    #: Idle workers beyond one per CPU are stopped after this many seconds.
    idle_worker_s: float = 10.0

    # ---- node: memory monitor (Ray's names) ----
    #: Fraction of the machine's memory in use past which the node kills a worker: the
    #: newest retriable task's first, actors last (``runtime/node/memory_monitor.py``).
    memory_usage_threshold: float = 0.95
    #: How often the node reads the machine's memory, in milliseconds (0 turns the monitor off).
    memory_monitor_ms: int = 250
    #: Times a task (with ``max_retries`` != 0) killed for memory runs again, counted apart
    #: from ``max_retries``; -1: without end. Ray's default is -1 with a growing delay
    #: between tries; the retries here start at once, so a task that always runs out of
    #: memory fails after these.
    task_oom_retries: int = 15

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
    #: Bytes of /dev/shm, besides its store, a node keeps allocated as blank segments that
    #: large puts and results are written into (``runtime/object_store/pool.py``), once it
    #: has seen a large object; 0: none.
    store_pool_bytes: int = 256 * 1024 * 1024

    # ---- RPC ----
    #: Deadline of one control RPC (GCS calls, reports between nodes), in seconds.
    rpc_timeout_s: float = 30.0
    #: Failed tries of reporting a task's results to its home node before a warning (a report
    #: is retried until the home takes it or is declared dead: the home waits for nothing else).
    report_retries: int = 5
    #: First wait before retrying such a report, in seconds (doubled after each failure) ...
    report_backoff_s: float = 0.1
    #: ... up to this many seconds.
    report_backoff_max_s: float = 2.0
    #: Most results reports one node has in flight to one home node (a burst of thousands
    #: would overflow the home's gRPC backlog, which cancels what it cannot queue).
    max_reports_in_flight: int = 32
    #: Most ``Schedule`` calls one node has in flight for tasks spilled from a full queue.
    max_spills_in_flight: int = 64
    #: Largest gRPC message, in bytes.
    max_message_bytes: int = 512 * 1024 * 1024
    #: Functions a GCS client keeps decoded (LRU).
    function_cache_size: int = 1024
    #: Changes queued for one slow GCS subscriber before it is dropped.
    subscriber_queue_size: int = 10_000
    #: Seconds a call that needs the GCS waits for it to come back during a GCS outage
    #: (exporting a new function, creating an actor, looking up a name, a node joining)
    #: before it fails with ``ConnectionLostError``; work that does not need the GCS goes
    #: on meanwhile. Counted from the call's first failure.
    gcs_outage_timeout_s: float = 20.0
    #: First wait between two tries to reach a GCS that went away, in seconds (doubled
    #: after each failed try, with jitter) ...
    gcs_retry_s: float = 0.05
    #: ... up to this many seconds.
    gcs_retry_max_s: float = 1.0

    # ---- daemons ----
    #: Seconds a stopping server lets in-flight calls finish.
    stop_grace_s: float = 1.0
    #: Seconds a stopping global scheduler waits to deregister from the GCS.
    deregister_timeout_s: float = 2.0
    #: How often a daemon checks that its parent is still alive, in seconds.
    parent_check_s: float = 1.0
    #: Seconds a stopping node gives its workers to exit after SIGTERM, before SIGKILL.
    worker_stop_grace_s: float = 2.0

    # ---- global scheduler (locality policy) ----
    #: Average task time assumed for queue wait estimates, in seconds.
    task_time_s: float = 0.010
    #: Bandwidth between nodes assumed for transfer estimates, in bytes per second.
    bandwidth: float = 1e9
    #: Most nodes a global scheduler scores for one task: in a larger cluster it scores the
    #: nodes holding the task's inputs and the one that spilled it, plus a random sample
    #: (the cost of a placement then stops growing with the cluster).
    placement_candidates: int = 16

    # ---- workers and drivers ----
    #: Cancels remembered for tasks a worker was given but has not started.
    cancelled_early_max: int = 1024
    #: Deadline of one ``rt.state`` query, in seconds.
    query_timeout_s: float = 60.0
    #: Deadline of exporting or loading one function or actor class (they can be large), in seconds.
    function_timeout_s: float = 60.0
    #: Deadline of what a closing client still does (finish its job, release an actor
    #: name, close its session), in seconds.
    close_timeout_s: float = 5.0
    #: Deadline of a quick look that must not hang (an actor's state in its repr), in seconds.
    probe_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> Settings:
        """Check every field, then the rules between fields; raise ``ConfigError`` (a
        ``ValueError``) naming the variable and what is accepted. Returns ``self``."""
        for f in fields(self):
            value = getattr(self, f.name)
            wrong = requirement(f.name, value)
            if wrong is not None:
                raise ConfigError(f"setting {f.name} (env {env_name(f.name)}) {wrong}, got {value!r}",
                                  setting=f.name)
        for name, other, why in _MORE_THAN:
            value, floor = getattr(self, name), getattr(self, other)
            if not value > floor:
                raise ConfigError(
                    f"setting {name} (env {env_name(name)}) must be more than {other} ({floor}) "
                    f"{why}, got {value!r}; raise {env_name(name)} or lower {env_name(other)}",
                    setting=name)
        if self.redis_shards > 0 and self.gcs_storage != "sqlite":
            raise ConfigError(
                f"setting redis_shards (env {env_name('redis_shards')}) = {self.redis_shards} stores the GCS "
                f"in local Redis servers, so gcs_storage (env {env_name('gcs_storage')}) must be left at its "
                f"default, got {self.gcs_storage!r}; set one of the two", setting="redis_shards")
        return self

    def override(self, **values: Any) -> Settings:
        """A copy with ``values`` (non-None) replaced, validated; unknown names raise
        ``UnknownSettingError`` (a ``TypeError``)."""
        _check_names(values)
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_env(self) -> dict[str, str]:
        """Every field as a ``CELLRAY_*`` variable, for a child process to ``load()``."""
        return {env_name(f.name): str(getattr(self, f.name)) for f in fields(self)}


#: Smallest accepted value of integer fields.
_MINIMA: dict[str, int] = {
    "heartbeat_ms": 10, "node_timeout_ms": 50, "bundle_check_ms": 10, "gcs_shards": 1, "event_flush_ms": 1,
    "redis_shards": 0, "gcs_storage_flush_ms": 0, "gcs_storage_batch_rows": 1,
    "spill_threshold": 0, "global_schedulers": 0, "max_spills": 0, "max_actor_spills": 0,
    "placement_candidates": 1, "pipeline_depth": 1, "max_inline_depth": 1, "max_starting_workers": 0,
    "inline_threshold": 0,
    "pull_chunk_bytes": 1024, "shm_read_limit_bytes": 0, "report_retries": 1,
    "max_reports_in_flight": 1, "max_spills_in_flight": 1,
    "max_message_bytes": 1024 * 1024, "function_cache_size": 1, "subscriber_queue_size": 1,
    "cancelled_early_max": 1, "memory_monitor_ms": 0, "task_oom_retries": -1, "store_pool_bytes": 0,
}

#: Fields that are switches: 0 (off) or 1 (on).
_SWITCHES = ("insecure",)

#: Fields that are fractions in (0, 1].
_FRACTIONS = ("store_memory_fraction", "store_shm_fraction", "memory_usage_threshold")

#: Fields that must be > 0.
_POSITIVE = ("start_timeout_s", "idle_worker_s", "rpc_timeout_s", "stop_grace_s",
             "worker_stop_grace_s", "report_backoff_s", "report_backoff_max_s",
             "deregister_timeout_s", "parent_check_s", "gcs_outage_timeout_s", "gcs_retry_s",
             "gcs_retry_max_s",
             "task_time_s", "bandwidth",
             "query_timeout_s", "function_timeout_s", "close_timeout_s", "probe_timeout_s",
             "gcs_storage_timeout_s")

#: Rules between fields: (field, the field it must be more than, why).
_MORE_THAN: tuple[tuple[str, str, str], ...] = (
    ("node_timeout_ms", "heartbeat_ms",
     "(a live node would be declared dead between two heartbeats)"),
    ("gcs_retry_max_s", "gcs_retry_s", "(the waits between tries to reach the GCS grow up to it)"),
)

#: The names of all settings, in declaration order.
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Settings))


def env_name(name: str) -> str:
    """The environment variable of the setting ``name``: ``CELLRAY_<NAME>``."""
    return f"{ENV_PREFIX}{name.upper()}"


def kind_of(name: str) -> type[int] | type[float] | type[str]:
    """The Python type of the setting ``name`` (``int``, ``float`` or ``str``)."""
    for f in fields(Settings):
        if f.name == name and isinstance(f.default, (int, float, str)):
            return type(f.default)
    raise UnknownSettingError(f"unknown setting {name!r}; the settings are {', '.join(FIELD_NAMES)}",
                              setting=name)


def requirement(name: str, value: object) -> str | None:
    """What ``value`` breaks for the setting ``name`` (``"must be an integer >= 1"``), or None.

    The one rule behind ``Settings.validate`` and the daemons' command-line flags.
    """
    kind = kind_of(name)
    if kind is str:
        if not isinstance(value, str):
            return "must be a string"
        return storage_problem(value) if name == "gcs_storage" else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be an integer" if kind is int else "must be a number"
    if kind is int and not isinstance(value, int):
        return "must be an integer"
    if name in _SWITCHES and value not in (0, 1):
        return "must be 0 or 1"
    if name in _FRACTIONS and not 0 < value <= 1:
        return "must be a number in (0, 1]"
    if name in _MINIMA and value < _MINIMA[name]:
        return f"must be an integer >= {_MINIMA[name]}"
    if name in _POSITIVE and not value > 0:
        return "must be a number > 0"
    return None


def _check_names(values: dict[str, Any]) -> None:
    unknown = set(values) - set(FIELD_NAMES)
    if unknown:
        raise UnknownSettingError(f"unknown setting(s) {', '.join(sorted(unknown))}; the settings "
                                  f"are {', '.join(FIELD_NAMES)}", setting=sorted(unknown)[0])


def load(**overrides: Any) -> Settings:
    """Settings from the environment, with ``overrides`` (non-None) on top, validated.

    A variable that does not parse, or a value out of range, raises ``ConfigError`` (a
    ``ValueError``) naming the variable; an unknown override raises ``UnknownSettingError``
    (a ``TypeError``) listing the settings.
    """
    _check_names(overrides)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env = os.environ.get(env_name(f.name))
        if env is None:
            continue
        kind = kind_of(f.name)
        try:
            values[f.name] = kind(env)
        except ValueError:
            raise ConfigError(f"environment variable {env_name(f.name)}={env!r} is not a "
                              f"valid {kind.__name__}; unset it or give a {kind.__name__}",
                              setting=f.name) from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(Settings(), **values)
