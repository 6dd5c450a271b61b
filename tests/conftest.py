"""Shared pytest set-up for cellray's own tests.

The fixtures live in ``runtime.testing.pytest_plugin`` (shipped, so that projects built
on cellray can use them too); this file only enables them for the whole suite.
"""

pytest_plugins = ["runtime.testing.pytest_plugin"]
