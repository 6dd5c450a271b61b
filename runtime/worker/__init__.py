"""Worker processes: ``python -m runtime.worker`` connects to its node and runs tasks.

``__main__`` is the process: it builds the driver's ``CoreClient`` and installs a
``host.WorkerHost`` on it (what a worker does beyond a driver: run the tasks the node
sends, nested ones while a task waits, lend its CPU, exit with its node). ``executor``
runs one task; ``results`` encodes its results or its typed error; ``actor`` runs an
actor's calls; ``cancels`` interrupts a cancelled task; ``output`` captures prints and
streams them to the task's owner.
"""
