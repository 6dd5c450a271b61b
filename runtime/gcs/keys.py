"""The GCS keys of actor names and scheduler replicas: built here and nowhere else.

Named actors and global-scheduler replicas live in the GCS ``kv`` table; actor rows in
the ``actors`` table under their actor id. Callers use the typed methods of
``GcsClient`` (``claim_actor_name``, ``register_scheduler``...), which build the keys
with these functions::

    kv      actor_name:<namespace>:<name>   -> JSON entry of the named actor
    kv      scheduler:<name>                -> b"host:port" of a global-scheduler replica
    actors  <actor id>                      -> serialized ActorRow

Examples
--------
>>> actor_name_key("default", "counter")
b'actor_name:default:counter'
>>> scheduler_key("gs-0")
b'scheduler:gs-0'
"""

from __future__ import annotations

__all__ = ["ACTORS_TABLE", "ACTOR_NAME_PREFIX", "KV_TABLE", "SCHEDULER_PREFIX", "actor_name_key",
           "scheduler_key"]

#: The table of ``ActorRow`` s, keyed by actor id.
ACTORS_TABLE = "actors"
#: The generic table that holds actor names and scheduler replicas.
KV_TABLE = "kv"
#: Named actors are registered under this prefix + ``<namespace>:<name>``.
ACTOR_NAME_PREFIX = b"actor_name:"
#: Global-scheduler replicas register under this prefix + their name (value ``host:port``).
SCHEDULER_PREFIX = b"scheduler:"


def actor_name_key(namespace: str, name: str) -> bytes:
    """The ``kv`` key under which the actor ``name`` of ``namespace`` is registered."""
    return ACTOR_NAME_PREFIX + f"{namespace}:{name}".encode()


def scheduler_key(name: str) -> bytes:
    """The ``kv`` key under which the global-scheduler replica ``name`` is registered."""
    return SCHEDULER_PREFIX + name.encode()
