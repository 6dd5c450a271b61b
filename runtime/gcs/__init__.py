"""The Global Control Store (GCS): all control state of a cluster, served by the head.

Layering, bottom up:

``storage``
    A small synchronous ``Storage`` protocol (get/put/delete/items per table) and
    ``InMemoryStorage``. Persistent backends (SQLite, Redis) implement the same protocol.
``state``
    ``GcsState``: the tables and their transitions, sharded by a stable hash of the key,
    one ``Storage`` per shard. Pure: no I/O, no asyncio, no gRPC, an injectable clock.
    Every mutation records change notifications that the service publishes.
``service``
    Thin ``grpc.aio`` servicers (NodeInfo, Jobs, Functions, Tables, Actors, Schedulers,
    PlacementGroups, Admin) that decode a
    request, call one ``GcsState`` method, publish the changes to subscribers, and encode
    the reply; plus the node-liveness loop.
``placement`` and ``reservations``
    Placement groups: the pure planner (which node for each bundle, per strategy, or why
    not) and the ``PlacementManager`` that reserves bundles on nodes, two-phase.
``fencing``
    A node declared dead never comes back under its id: the GCS refuses its heartbeats
    and registrations (``NodeDiedError``, sent as FAILED_PRECONDITION), and the node
    rejoins under a new id with nothing running.
``keys``
    The keys of actor names and scheduler replicas in the ``kv`` table: built there only
    (the state builds them for the typed ``Actors`` and ``Schedulers`` calls).
``client``
    ``GcsClient``: the async client that node managers, schedulers and drivers use, with
    typed calls for actors, actor names and scheduler replicas.
``__main__``
    ``python -m runtime.gcs``: the head process.
"""
