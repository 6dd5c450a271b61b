"""Worker processes: ``python -m runtime.worker`` connects to its node and runs tasks.

``executor`` runs one task (arguments in, results or a typed error out); ``output``
captures prints and streams them to the task's owner; ``__main__`` is the process.
"""
