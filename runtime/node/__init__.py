"""The node manager ("raylet"): one per node.

``state`` is the pure local scheduler (``LocalScheduler``: events in, typed actions out,
composed of parts that each own their data: resources, ready queues, workers, lending,
objects, clients, actors, spilling); ``actions`` declares what it may ask for;
``dispatch`` carries the actions out through one table onto narrow outlets (``sessions``,
``worker_pool``, ``reporting`` for the GCS, ``peers`` for other nodes and the global
schedulers); ``manager`` wires them; ``service`` is the thin gRPC layer; ``__main__``
runs it through the shared daemon skeleton.
"""
