"""The driver-side API, built on ``_client.CoreClient``.

``_context`` holds the one current connection (created by ``init``); ``_object_ref``,
``_remote_function`` and ``_args`` build task specs; ``_core`` implements the public
functions that ``runtime/__init__.py`` re-exports.
"""
