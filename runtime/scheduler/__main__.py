"""``python -m runtime.scheduler``: one global scheduler replica, until told to stop.

::

    python -m runtime.scheduler --gcs-address HOST:PORT --token-file FILE --session-dir DIR \\
        [--host 127.0.0.1] [--port 0] [--name gs-0] [--policy locality|spread] \\
        [--task-time-ms 10] [--bandwidth 1e9] [--parent-pid PID] [--head-pid PID] --ready-file PATH

It follows the GCS ``nodes`` table, serves ``GlobalScheduler`` on its own port, and
registers in the GCS ``kv`` table as ``b"scheduler:" + name`` -> ``b"host:port"`` (again
after every resubscription, in case the GCS restarted without it). Then it writes the
ready file (``{"port", "pid", "address", "name"}``). SIGTERM or SIGINT stop it
gracefully: it deletes its ``kv`` row, lets in-flight calls finish for 1 s, exits 0. With
``--parent-pid`` it exits when its parent does; with ``--head-pid`` when that process (the
GCS on this machine) is gone, so replicas of a detached cluster stop with its head.
Logs go to stderr, which the launcher redirects to ``DIR/logs/<name>.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

import psutil

from runtime._session import read_token
from runtime.cluster.process import exit_with_parent, write_ready_file
from runtime.gcs.client import GcsClient
from runtime.rpc.server import create_server
from runtime.scheduler import KV_PREFIX
from runtime.scheduler.feed import NodeFeed
from runtime.scheduler.policies import POLICY_NAMES, make_policy
from runtime.scheduler.service import SchedulerService
from runtime.scheduler.state import ClusterView

logger = logging.getLogger("runtime.scheduler")

#: How long in-flight calls may run once the replica is told to stop.
GRACE_S = 1.0
#: How long the replica tries to delete its kv row on the way out.
DEREGISTER_TIMEOUT_S = 2.0


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the replica's command line; invalid values exit with a usage message."""
    p = argparse.ArgumentParser(prog="python -m runtime.scheduler",
                                description="Run one cellray global scheduler replica.")
    p.add_argument("--gcs-address", required=True, help="host:port of the GCS")
    p.add_argument("--token-file", required=True, help="file holding the cluster token")
    p.add_argument("--session-dir", required=True, type=pathlib.Path, help="the cluster's session directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    p.add_argument("--name", default="gs-0", help="replica name, unique in the cluster (default gs-0)")
    p.add_argument("--policy", default="locality", choices=POLICY_NAMES, help="placement policy")
    p.add_argument("--task-time-ms", type=_positive, default=10.0,
                   help="locality: average task time for queue wait estimates (default 10)")
    p.add_argument("--bandwidth", type=_positive, default=1e9,
                   help="locality: bytes/s between nodes for transfer estimates (default 1e9)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when the parent process is gone")
    p.add_argument("--head-pid", type=int, default=None, help="exit when this process (the local GCS) is gone")
    p.add_argument("--ready-file", required=True, type=pathlib.Path, help="JSON written once serving")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0..65535, got {args.port}")
    if not args.name or not args.name.isprintable() or " " in args.name:
        p.error(f"--name must be a non-empty word, got {args.name!r}")
    return args


def configure_logging(level: str, name: str) -> None:
    """Log to stderr with the replica name and pid on every line."""
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {name}[%(process)d] %(name)s: %(message)s")


async def _watch_pid(pid: int, stop: asyncio.Event, interval: float = 1.0) -> None:
    """Set ``stop`` once ``pid`` has exited (a zombie or a reused pid counts as exited)."""
    try:
        proc = psutil.Process(pid)
        while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            await asyncio.sleep(interval)
    except psutil.NoSuchProcess:
        pass
    logger.info("the head process %d is gone; stopping", pid)
    stop.set()


async def serve(args: argparse.Namespace) -> int:
    """Run the replica until a signal (or its parent or head exits); return the exit code."""
    token = read_token(args.token_file)
    policy = make_policy(args.policy, **({"task_time_s": args.task_time_ms / 1000, "bandwidth": args.bandwidth}
                                         if args.policy == "locality" else {}))
    view = ClusterView(policy)
    service = SchedulerService(view, name=args.name, token=token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.parent_pid is not None:
        exit_with_parent(args.parent_pid)
    try:
        server, port = await create_server(args.host, args.port, token, service.adders())
    except (OSError, RuntimeError) as err:
        logger.error("could not start the global scheduler %s on %s:%s: %s. Pick another --port.",
                     args.name, args.host, args.port, err)
        return 1
    address = f"{args.host}:{port}"
    key = KV_PREFIX + args.name.encode()
    gcs = GcsClient(args.gcs_address, token, timeout=10.0)

    async def register() -> None:
        await gcs.put("kv", key, address.encode())

    feed = NodeFeed(gcs, view, service.view_changed, on_synced=register)
    tasks = [loop.create_task(feed.run(), name="node-feed"),
             loop.create_task(stop.wait(), name="stop")]
    if args.head_pid is not None:
        tasks.append(loop.create_task(_watch_pid(args.head_pid, stop), name="head-watch"))
    synced = loop.create_task(feed.synced.wait(), name="synced")
    code = 0
    try:
        await asyncio.wait([synced, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if feed.synced.is_set() and not stop.is_set():
            write_ready_file(args.ready_file, {"port": port, "pid": os.getpid(), "address": address,
                                               "name": args.name})
            logger.info("global scheduler %s serving on %s (policy %s, GCS %s, %d node(s))",
                        args.name, address, policy.name, args.gcs_address, len(view))
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        failure = tasks[0].exception() if tasks[0].done() and not tasks[0].cancelled() else None
        if failure is not None:
            logger.error("global scheduler %s cannot follow the GCS at %s: %s", args.name, args.gcs_address, failure)
            code = 1
        logger.info("stopping the global scheduler %s on %s", args.name, address)
    finally:
        for task in (synced, *tasks):  # the feed stops before the kv row goes: no re-register after
            task.cancel()
        await asyncio.gather(synced, *tasks, return_exceptions=True)
        with contextlib.suppress(Exception):  # best effort: the GCS may be gone already
            await asyncio.wait_for(gcs.put("kv", key, b""), DEREGISTER_TIMEOUT_S)
        await server.stop(GRACE_S)
        await service.close()
        await gcs.close()
    logger.info("global scheduler %s stopped", args.name)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m runtime.scheduler``."""
    args = parse_args(argv)
    configure_logging(args.log_level, args.name)
    try:
        return asyncio.run(serve(args))
    except FileNotFoundError as err:  # the token file: read_token says what to pass
        logger.error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
