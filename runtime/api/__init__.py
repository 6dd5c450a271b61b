"""The driver-side API, built on ``_client.CoreClient``.

``_context`` holds the one current connection (created by ``init``); ``_object_ref``,
``_remote_function`` and ``_args`` build task specs; ``_core`` implements the public
functions that ``runtime/__init__.py`` re-exports. The client sends through ``_outbox``,
keeps objects and ref counts in ``_objects``, and leaves what a worker process does
differently to the ``_host.Host`` a worker installs (``runtime.api`` never imports
``runtime.worker``).
"""
