"""``python -m runtime.worker``: connect to the node, then run tasks until the node goes.

Start-up is ``runtime._daemon``'s (flags, settings from the ``CELLRAY_*`` variables the
node passes down, logging as ``worker[pid]``, token, parent watch); the worker runs no
event loop of its own and serves nothing, so it only ``prepare``s. It stops when the
session to its node breaks (``WorkerHost.on_broken``) or when the node kills it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from runtime._daemon import Daemon
from runtime.api import _context
from runtime.api._client import CoreClient
from runtime.worker import runtime_env
from runtime.worker.executor import Executor
from runtime.worker.host import WorkerHost
from runtime.worker.output import TaskOutput


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node-address", required=True, help="host:port of this worker's node")
    p.add_argument("--gcs-address", required=True, help="host:port of the cluster's GCS")
    p.add_argument("--worker-id", required=True, help="the id the node gave this worker (hex)")
    p.add_argument("--node-id", required=True, help="the node's id (hex)")
    p.add_argument("--runtime-env-file", default="",
                   help="the runtime env this worker runs (a JSON file its node wrote)")


DAEMON = Daemon("worker", prog="python -m runtime.worker", description=__doc__,
                add_arguments=_arguments, serves=False, ready_file="absent")


def main(argv: Sequence[str] | None = None) -> None:
    ctx = DAEMON.prepare(argv)
    args, settings = ctx.args, ctx.settings
    client = CoreClient(node_address=args.node_address, gcs_address=args.gcs_address,
                        token=ctx.token, job_id=b"", settings=settings)
    env_error = runtime_env.load(args.runtime_env_file) if args.runtime_env_file else ""
    executor = (runtime_env.BrokenEnvExecutor(client, settings.cancelled_early_max, env_error)
                if env_error else Executor(client, settings.cancelled_early_max))
    host = WorkerHost(client, executor, bytes.fromhex(args.worker_id))
    client.install_host(host)
    _context.set_current(client)
    executor.cancels.install(executor.running_task)
    client.start(settings.start_timeout_s)
    out, err = sys.__stdout__, sys.__stderr__
    assert out is not None and err is not None, "a worker always has stdout and stderr"
    sys.stdout = TaskOutput(client, out, is_stderr=False)
    sys.stderr = TaskOutput(client, err, is_stderr=True)
    while True:
        try:
            op = host.tasks.get()
        except KeyboardInterrupt:  # a cancel that arrived between tasks
            continue
        executor.dispatch(op.execute)
        if env_error:  # it failed that task; a new worker for the next one tries the env again
            client.close()
            return


if __name__ == "__main__":
    main()
