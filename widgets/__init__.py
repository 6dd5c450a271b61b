"""ipywidgets dashboards and rich reprs for a cellray cluster.

One small module per dashboard (nodes, tasks and futures, actors, scheduler spillover),
each composed from stock ipywidgets, refreshed by a throttled background updater, and
fed only by the public state and event API of ``runtime``, with ``_repr_html_`` and
plain-text fallbacks for static renderers. In progress: no dashboard is written yet.
"""
