"""``python -m runtime.scheduler``: one global scheduler replica, until told to stop.

::

    python -m runtime.scheduler --gcs-address HOST:PORT --token-file FILE --session-dir DIR \\
        [--host 127.0.0.1] [--port 0] [--name gs-0] [--policy locality|spread] \\
        [--task-time-ms 10] [--bandwidth 1e9] [--parent-pid PID] [--head-pid PID] --ready-file PATH

It follows the GCS ``nodes`` table, serves ``GlobalScheduler`` on its own port, and
registers in the GCS with ``register_scheduler`` (again after every resubscription, in
case the GCS restarted without it). Then it writes the ready file (``{"port", "pid",
"address", "name"}``). SIGTERM or SIGINT stop it gracefully: it deregisters (for at most
``deregister_timeout_s``), lets in-flight calls finish for ``stop_grace_s``, exits 0. With
``--parent-pid`` it exits when its parent does; with ``--head-pid`` when that process (the
head that supervises the GCS on this machine) is gone, so replicas of a detached cluster
stop with its head.
Logs go to stderr, which the launcher redirects to ``DIR/logs/<name>.log``. Start-up and
stop are ``runtime._daemon``'s.

A replica survives a GCS outage: it places tasks on its last view of the nodes meanwhile,
and follows the GCS again once it is back (a new snapshot, then registering again). A GCS
that came back as another cluster (it restarted without persistent storage) makes the
replica exit, with one line in its log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from runtime._daemon import Daemon, DaemonContext, SettingFlag
from runtime.exceptions import ConnectionLostError
from runtime.gcs.client import GcsClient
from runtime.scheduler.feed import NodeFeed
from runtime.scheduler.policies import POLICY_NAMES, make_policy
from runtime.scheduler.service import SchedulerService
from runtime.scheduler.state import ClusterView

logger = logging.getLogger("runtime.scheduler")


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gcs-address", required=True, help="host:port of the GCS")
    p.add_argument("--name", default="gs-0", help="replica name, unique in the cluster (default gs-0)")
    p.add_argument("--policy", default="locality", choices=POLICY_NAMES, help="placement policy")
    p.add_argument("--head-pid", type=int, default=None,
                   help="exit when this process (the local GCS) is gone")


def _check(args: argparse.Namespace) -> str | None:
    name: str = args.name
    if not name or not name.isprintable() or " " in name:
        return f"--name must be a non-empty word, got {name!r}"
    return None


DAEMON = Daemon(
    "scheduler", prog="python -m runtime.scheduler", description="Run one cellray global scheduler replica.",
    add_arguments=_arguments, check=_check, log_name=lambda args: str(args.name),
    settings_flags=(
        SettingFlag("--task-time-ms", "task_time_s", "locality: average task time for queue wait "
                    "estimates, in ms", scale=0.001),
        SettingFlag("--bandwidth", "bandwidth", "locality: bytes/s between nodes for transfer estimates"),
    ))


async def serve(ctx: DaemonContext) -> int:
    """Run the replica until a stop is requested (or its parent or head exits); the exit code."""
    args, settings = ctx.args, ctx.settings
    options: dict[str, Any] = ({"task_time_s": settings.task_time_s, "bandwidth": settings.bandwidth}
                               if args.policy == "locality" else {})
    policy = make_policy(args.policy, **options)
    view = ClusterView(policy, max_candidates=settings.placement_candidates)
    service = SchedulerService(view, name=args.name, token=ctx.token)
    _, port = await ctx.serve(service.adders())
    address = ctx.address(port)

    def left(err: ConnectionLostError) -> None:
        logger.error("global scheduler %s exits: its GCS at %s restarted without persistent storage "
                     "and is now another cluster; this replica belonged to the old one", args.name,
                     args.gcs_address)
        ctx.request_stop()

    gcs = GcsClient.from_settings(args.gcs_address, ctx.token, settings, wait_for_first_contact=True,
                                  on_new_cluster=left)

    async def register() -> None:
        await gcs.register_scheduler(args.name, address)

    feed = NodeFeed(gcs, view, service.view_changed, on_synced=register)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(feed.run(), name="node-feed"),
             loop.create_task(ctx.stopping.wait(), name="stop")]
    if args.head_pid is not None:
        tasks.append(ctx.watch_process(args.head_pid, "the head process"))
    synced = loop.create_task(feed.synced.wait(), name="synced")
    code = 0
    try:
        await asyncio.wait([synced, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if feed.synced.is_set() and not ctx.stopping.is_set():
            ctx.ready(port, name=args.name)
            logger.info("global scheduler %s serving on %s (policy %s, GCS %s, %d node(s))",
                        args.name, address, policy.name, args.gcs_address, len(view))
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        failure = tasks[0].exception() if tasks[0].done() and not tasks[0].cancelled() else None
        if failure is not None:
            logger.error("global scheduler %s cannot follow the GCS at %s: %s", args.name,
                         args.gcs_address, failure)
            code = 1
        logger.info("stopping the global scheduler %s on %s", args.name, address)
    finally:
        for task in (synced, *tasks):  # the feed stops before deregistering: no re-register after
            task.cancel()
        await asyncio.gather(synced, *tasks, return_exceptions=True)
        gcs.link.waits = False  # a stop does not wait for a GCS that is away
        with contextlib.suppress(Exception):  # best effort: the GCS may be gone already
            await asyncio.wait_for(gcs.deregister_scheduler(args.name), settings.deregister_timeout_s)
        await ctx.stop_servers()
        await service.close()
        await gcs.close()
    logger.info("global scheduler %s stopped", args.name)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m runtime.scheduler``."""
    return DAEMON.run(serve, argv)


if __name__ == "__main__":
    sys.exit(main())
