"""Settings: defaults, validation, and the one environment prefix (CELLRAY_).

Precedence: explicit ``init()`` arguments, then ``CELLRAY_*`` environment variables, then
the defaults below. Bad values raise at once with the variable's name and what is accepted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

#: Objects whose serialized size is below this travel inline in messages.
INLINE_THRESHOLD = 100 * 1024


@dataclass(frozen=True)
class Settings:
    """Cluster settings. Each field can be set by ``CELLRAY_<NAME>`` (upper case)."""

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
    #: Local queue length over which tasks that cannot start now spill (0: twice the CPUs, min 4).
    spill_threshold: int = 0
    #: Global scheduler replicas a local cluster starts.
    global_schedulers: int = 2
    #: Host the cluster's servers bind to.
    host: str = "127.0.0.1"

    def validate(self) -> Settings:
        for name, low in (("heartbeat_ms", 10), ("node_timeout_ms", 50), ("gcs_shards", 1),
                          ("event_flush_ms", 1), ("spill_threshold", 0), ("global_schedulers", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"setting {name} (env CELLRAY_{name.upper()}) must be an "
                                 f"integer >= {low}, got {value!r}")
        if self.start_timeout_s <= 0:
            raise ValueError(f"setting start_timeout_s must be > 0, got {self.start_timeout_s!r}")
        return self


def load(**overrides: Any) -> Settings:
    """Settings from the environment, with ``overrides`` (non-None) on top, validated."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env = os.environ.get(f"CELLRAY_{f.name.upper()}")
        if env is None:
            continue
        kind = type(f.default)
        try:
            values[f.name] = kind(env)
        except ValueError:
            raise ValueError(f"environment variable CELLRAY_{f.name.upper()}={env!r} is not a "
                             f"valid {kind.__name__}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(Settings(), **values).validate()
