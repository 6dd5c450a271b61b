"""The head process: ``python -m runtime.gcs`` serves the GCS until told to stop.

::

    python -m runtime.gcs --host 127.0.0.1 --port 0 --session-dir DIR --token-file FILE \\
        --num-shards 4 [--heartbeat-ms 500] [--node-timeout-ms 10000] [--parent-pid PID] \\
        --ready-file PATH

Once serving, it writes ``DIR/address`` (``host:port``) and the ready file
(``{"port", "pid", "address"}``). SIGTERM, SIGINT and ``Admin.Shutdown`` stop it
gracefully (in-flight calls get 1 s) with exit code 0. Logs go to stderr, which the
launcher redirects to ``DIR/logs/gcs.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

from runtime._session import read_token
from runtime.cluster.process import exit_with_parent, write_ready_file
from runtime.gcs.service import GcsService
from runtime.gcs.state import GcsState
from runtime.rpc.server import create_server

logger = logging.getLogger("runtime.gcs")

#: How long in-flight calls may run once the head is told to stop.
GRACE_S = 1.0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the head's command line; invalid values exit with a usage message."""
    p = argparse.ArgumentParser(prog="python -m runtime.gcs", description="Run the cellray GCS (head) process.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    p.add_argument("--session-dir", required=True, type=pathlib.Path, help="the cluster's session directory")
    p.add_argument("--token-file", required=True, help="file holding the cluster token")
    p.add_argument("--num-shards", type=_positive, default=4, help="GCS shards (default 4)")
    p.add_argument("--heartbeat-ms", type=_positive, default=500, help="node liveness check period")
    p.add_argument("--node-timeout-ms", type=_positive, default=10_000,
                   help="silence after which a node is declared dead")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    p.add_argument("--ready-file", required=True, type=pathlib.Path, help="JSON written once serving")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0..65535, got {args.port}")
    return args


def configure_logging(level: str) -> None:
    """Log to stderr with the component name and pid on every line."""
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s gcs[%(process)d] %(name)s: %(message)s")


async def serve(args: argparse.Namespace) -> int:
    """Run the GCS until a signal or ``Admin.Shutdown``; return the exit code."""
    token = read_token(args.token_file)
    state = GcsState(num_shards=args.num_shards)
    service = GcsService(state, session_dir=str(args.session_dir), heartbeat_ms=args.heartbeat_ms,
                         node_timeout_ms=args.node_timeout_ms)
    try:
        server, port = await create_server(args.host, args.port, token, service.adders())
    except (OSError, RuntimeError) as err:
        logger.error("could not start the GCS on %s:%s: %s. Pick another --port or stop the process "
                     "holding it.", args.host, args.port, err)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.shutdown_requested.set)
    service.start()
    address = f"{args.host}:{port}"
    args.session_dir.mkdir(parents=True, exist_ok=True)
    tmp = args.session_dir / "address.tmp"
    tmp.write_text(address)
    os.replace(tmp, args.session_dir / "address")
    write_ready_file(args.ready_file, {"port": port, "pid": os.getpid(), "address": address})
    if args.parent_pid is not None:
        exit_with_parent(args.parent_pid)
    logger.info("GCS serving on %s with %d shards (session %s)", address, args.num_shards, args.session_dir)
    try:
        await service.shutdown_requested.wait()
        logger.info("stopping the GCS on %s", address)
    finally:
        await service.close()
        await server.stop(GRACE_S)
        state.close()
    logger.info("GCS stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m runtime.gcs``."""
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        return asyncio.run(serve(args))
    except FileNotFoundError as err:  # the token file: read_token says what to pass
        logger.error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
