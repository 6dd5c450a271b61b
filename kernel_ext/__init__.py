"""The IPython extension for cellray: ``%load_ext kernel_ext`` in a notebook.

It will register the cell and line magics (``%cluster`` to start or attach to a cluster,
``%%remote`` to run a cell on a worker), route a remote task's output back under the cell
that started it, and show the live dashboards from ``widgets``. It builds only on the
public ``runtime`` API and on ``widgets``; nothing here is imported by ``runtime``. In
progress: the magics and ``load_ipython_extension`` are not written yet.
"""
