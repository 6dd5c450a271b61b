"""The node manager ("raylet"): one per node.

``state`` is the pure local scheduler (tasks, workers, objects, references: events in,
actions out); ``worker_pool`` starts and reaps worker processes; ``service`` is the thin
gRPC layer that feeds events to the state and carries out its actions; ``__main__`` runs it.
"""
