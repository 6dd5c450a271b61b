"""The head process of a detached cluster: ``python -m runtime.gcs.supervisor``.

``cellray start --head`` starts this process, which outlives the command. It starts the
GCS and the global scheduler replicas, writes its ready file, and then supervises them
(``runtime.cluster.supervision``): a GCS that dies is started again on the same address
with the same storage within seconds, a replica under the same name::

    python -m runtime.gcs.supervisor --session-dir DIR --token-file FILE --ready-file PATH \\
        [--host 127.0.0.1] [--port 6380] [--global-schedulers 2] \\
        [--gcs-storage sqlite:///var/lib/cellray/gcs.db | redis://h:p,h:p] [--redis-shards 4]

The ready file holds ``{"port", "pid", "address", "gcs_pid", "storage", "cluster_id",
"schedulers": [{"name", "pid"}]}`` (``pid`` is this process's, ``gcs_pid`` the GCS's,
``storage`` and ``cluster_id`` what the GCS said when it started). Every pid is also in the
session's processes.json, the GCS's under ``head`` (the one running now), this process's
under ``supervisor``. SIGTERM (``cellray stop``) stops the supervision first, then the
replicas, then the GCS, and exits 0; a GCS that cannot start at all exits 1, its log's
end logged. The log is ``DIR/logs/supervisor.log``; the settings come from ``CELLRAY_*``
as for every daemon (``runtime._daemon``).

An ``rt.init()`` cluster needs no such process: its driver supervises from a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib
import sys
import threading
from collections.abc import Sequence

from runtime._daemon import Daemon, DaemonContext, SettingFlag
from runtime.cluster.head import Head, HeadOptions
from runtime.cluster.supervision import Supervisor
from runtime.exceptions import ClusterStartError

logger = logging.getLogger("runtime.gcs.supervisor")


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address the GCS and replicas bind")
    p.add_argument("--port", type=_non_negative, default=0,
                   help="the GCS's port (0: a free one, kept across its restarts)")
    p.add_argument("--global-schedulers", type=_non_negative, default=None,
                   help="global scheduler replicas (default: setting global_schedulers)")


def _check(args: argparse.Namespace) -> str | None:
    if args.port > 65535:
        return f"argument --port: must be in 0..65535, got {args.port}"
    return None


DAEMON = Daemon("supervisor", prog="python -m runtime.gcs.supervisor",
                description="Run a detached cluster's head: the GCS and the global scheduler "
                            "replicas, restarted when they die.",
                add_arguments=_arguments, check=_check, serves=False,
                settings_flags=(
                    SettingFlag("--gcs-storage", "gcs_storage", "the GCS's storage: memory, sqlite, "
                                "sqlite:///abs/path.db or redis://h:p,h:p"),
                    SettingFlag("--redis-shards", "redis_shards",
                                "local redis-server processes the GCS starts and owns"),
                ))


def head_of(ctx: DaemonContext) -> Head:
    """The ``Head`` this process runs, from its flags and settings."""
    args = ctx.args
    replicas = (ctx.settings.global_schedulers if args.global_schedulers is None
                else args.global_schedulers)
    head = Head(HeadOptions(
        session_dir=ctx.session_dir, token_file=pathlib.Path(args.token_file).resolve(),
        settings=ctx.settings, host=args.host, port=args.port, global_schedulers=replicas,
        detach=True, head_pid=os.getpid()))
    head.supervisor_pid = os.getpid()
    return head


def _start(head: Head) -> None:
    head.start_gcs()
    head.start_schedulers()
    head.wait_schedulers()


async def supervise(ctx: DaemonContext) -> int:
    """Start the head's processes, supervise them until a stop is requested; the exit code."""
    head = head_of(ctx)
    try:
        await asyncio.to_thread(_start, head)
    except ClusterStartError as err:
        logger.error("could not start the head: %s", err)
        await asyncio.to_thread(head.stop)
        return 1
    except BaseException:
        await asyncio.to_thread(head.stop)
        raise
    ctx.ready(head.port, address=head.address, gcs_pid=head.gcs.pid if head.gcs else 0,
              storage=head.gcs_info.get("storage", ""), cluster_id=head.gcs_info.get("cluster_id", ""),
              schedulers=[{"name": n, "pid": h.pid} for n, h in head.schedulers.items()])
    logger.info("head serving: GCS on %s (pid %s), %d global scheduler(s)", head.address,
                head.gcs.pid if head.gcs else "-", len(head.schedulers))
    supervisor = Supervisor(head, ctx.token, log_to_file=False)
    stop = threading.Event()
    ctx.on_stop(stop.set)
    try:
        await asyncio.to_thread(supervisor.run, stop)
    finally:
        logger.info("stopping the head on %s (%d GCS restart(s))", head.address,
                    supervisor.counts.gcs)
        await asyncio.to_thread(head.stop)
    logger.info("head stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m runtime.gcs.supervisor``."""
    return DAEMON.run(supervise, argv)


if __name__ == "__main__":
    sys.exit(main())
