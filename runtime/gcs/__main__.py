"""The head process: ``python -m runtime.gcs`` serves the GCS until told to stop.

::

    python -m runtime.gcs --host 127.0.0.1 --port 0 --session-dir DIR --token-file FILE \\
        --num-shards 4 [--heartbeat-ms 500] [--node-timeout-ms 10000] [--parent-pid PID] \\
        [--gcs-storage sqlite | sqlite:///abs/gcs.db | redis://h:p,h:p | memory] \\
        [--redis-shards N] --ready-file PATH

Its tables are kept where ``--gcs-storage`` says (``runtime.gcs.storage_open``; default
``sqlite``: ``DIR/gcs.db``), or in N redis-server processes it starts and owns
(``--redis-shards N``, data in ``DIR/redis/``). Started again on the same storage, it
serves the same tables under the same cluster id.

Once serving, it writes ``DIR/address`` (``host:port``) and the ready file
(``{"port", "pid", "address", "cluster_id", "storage"}``). SIGTERM, SIGINT and
``Admin.Shutdown`` stop it gracefully (in-flight calls get ``stop_grace_s``, the last
batch of writes is saved) with exit code 0. Exit codes: 1 when it cannot start (port
taken, storage that cannot be opened or belongs to a GCS with another number of shards);
3 (``EXIT_STORAGE_LOST``) when its storage is unreachable at start or stays unreachable
for ``gcs_storage_timeout_s`` while it serves, said in one error line. Logs go to stderr,
which the launcher redirects to ``DIR/logs/gcs.log``. Start-up and stop are
``runtime._daemon``'s; the flags without a ``--`` counterpart come from ``CELLRAY_*``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from runtime._daemon import Daemon, DaemonContext, SettingFlag
from runtime.exceptions import ConfigError
from runtime.gcs.service import GcsService
from runtime.gcs.state import GcsState
from runtime.gcs.storage import StorageError, StorageUnavailableError
from runtime.gcs.storage_open import open_storage, shard_count

logger = logging.getLogger("runtime.gcs")

DAEMON = Daemon(
    "gcs", prog="python -m runtime.gcs", description="Run the cellray GCS (head) process.",
    settings_flags=(
        SettingFlag("--num-shards", "gcs_shards", "GCS shards"),
        SettingFlag("--heartbeat-ms", "heartbeat_ms", "node liveness check period"),
        SettingFlag("--node-timeout-ms", "node_timeout_ms", "silence after which a node is declared dead"),
        SettingFlag("--gcs-storage", "gcs_storage",
                    "where the tables live: memory, sqlite, sqlite:///abs/path.db or redis://h:p,h:p"),
        SettingFlag("--redis-shards", "redis_shards", "start and own this many local redis-server processes"),
    ))

#: The exit code of a GCS whose storage is unreachable (at start, or for gcs_storage_timeout_s).
EXIT_STORAGE_LOST = 3


async def serve(ctx: DaemonContext) -> int:
    """Run the GCS until a stop is requested or ``Admin.Shutdown``; return the exit code."""
    settings = ctx.settings
    try:
        num_shards = shard_count(settings)
        storage = open_storage(settings, ctx.session_dir, num_shards)
    except (StorageError, ConfigError) as err:
        logger.error("cannot open the GCS storage: %s", err)
        return EXIT_STORAGE_LOST if isinstance(err, StorageUnavailableError) else 1
    lost: list[StorageError] = []
    try:
        state = GcsState(num_shards=num_shards, storage_factory=storage.factory())
        service = GcsService(state, session_dir=str(ctx.session_dir), heartbeat_ms=settings.heartbeat_ms,
                             node_timeout_ms=settings.node_timeout_ms,
                             queue_size=settings.subscriber_queue_size, token=ctx.token,
                             cluster_id=storage.cluster_id, storage=storage.description,
                             flush=storage.flush if storage.store is not None else None)
        loop = asyncio.get_running_loop()

        def storage_lost(err: StorageError) -> None:  # on the storage's thread; it logged the error
            lost.append(err)
            loop.call_soon_threadsafe(service.shutdown_requested.set)

        storage.on_failure(storage_lost)
        _, port = await ctx.serve(service.adders())
        ctx.on_stop(service.shutdown_requested.set)
        service.start()
        address = ctx.address(port)
        ctx.session_dir.mkdir(parents=True, exist_ok=True)
        tmp = ctx.session_dir / "address.tmp"
        tmp.write_text(address)
        os.replace(tmp, ctx.session_dir / "address")
        ctx.ready(port, cluster_id=storage.cluster_id, storage=storage.description)
        logger.info("GCS serving on %s with %d shards, storage %s, cluster %s (%s; session %s)", address,
                    num_shards, storage.description, storage.cluster_id,
                    "new" if storage.created else "restored from its storage", ctx.session_dir)
        try:
            await service.shutdown_requested.wait()
            logger.info("stopping the GCS on %s%s", address, ": its storage is gone" if lost else "")
        finally:
            await service.close()
            await ctx.stop_servers()
            state.close()
    finally:
        storage.close()
    logger.info("GCS stopped")
    return EXIT_STORAGE_LOST if lost else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m runtime.gcs``."""
    return DAEMON.run(serve, argv)


if __name__ == "__main__":
    sys.exit(main())
