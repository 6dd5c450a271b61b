"""The head process: ``python -m runtime.gcs`` serves the GCS until told to stop.

::

    python -m runtime.gcs --host 127.0.0.1 --port 0 --session-dir DIR --token-file FILE \\
        --num-shards 4 [--heartbeat-ms 500] [--node-timeout-ms 10000] [--parent-pid PID] \\
        --ready-file PATH

Once serving, it writes ``DIR/address`` (``host:port``) and the ready file
(``{"port", "pid", "address"}``). SIGTERM, SIGINT and ``Admin.Shutdown`` stop it
gracefully (in-flight calls get ``stop_grace_s``) with exit code 0. Logs go to stderr,
which the launcher redirects to ``DIR/logs/gcs.log``. Start-up and stop are
``runtime._daemon``'s; the flags without a ``--`` counterpart come from ``CELLRAY_*``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from runtime._daemon import Daemon, DaemonContext, SettingFlag
from runtime.gcs.service import GcsService
from runtime.gcs.state import GcsState

logger = logging.getLogger("runtime.gcs")

DAEMON = Daemon(
    "gcs", prog="python -m runtime.gcs", description="Run the cellray GCS (head) process.",
    settings_flags=(
        SettingFlag("--num-shards", "gcs_shards", "GCS shards"),
        SettingFlag("--heartbeat-ms", "heartbeat_ms", "node liveness check period"),
        SettingFlag("--node-timeout-ms", "node_timeout_ms", "silence after which a node is declared dead"),
    ))


async def serve(ctx: DaemonContext) -> int:
    """Run the GCS until a stop is requested or ``Admin.Shutdown``; return the exit code."""
    settings = ctx.settings
    state = GcsState(num_shards=settings.gcs_shards)
    service = GcsService(state, session_dir=str(ctx.session_dir), heartbeat_ms=settings.heartbeat_ms,
                         node_timeout_ms=settings.node_timeout_ms,
                         queue_size=settings.subscriber_queue_size, token=ctx.token)
    try:
        _, port = await ctx.serve(service.adders())
        ctx.on_stop(service.shutdown_requested.set)
        service.start()
        address = ctx.address(port)
        ctx.session_dir.mkdir(parents=True, exist_ok=True)
        tmp = ctx.session_dir / "address.tmp"
        tmp.write_text(address)
        os.replace(tmp, ctx.session_dir / "address")
        ctx.ready(port)
        logger.info("GCS serving on %s with %d shards (session %s)", address, settings.gcs_shards,
                    ctx.session_dir)
        try:
            await service.shutdown_requested.wait()
            logger.info("stopping the GCS on %s", address)
        finally:
            await service.close()
            await ctx.stop_servers()
    finally:
        state.close()
    logger.info("GCS stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m runtime.gcs``."""
    return DAEMON.run(serve, argv)


if __name__ == "__main__":
    sys.exit(main())
