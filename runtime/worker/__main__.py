"""``python -m runtime.worker``: connect to the node, then run tasks until the node goes."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from runtime import _session
from runtime.api import _context
from runtime.api._client import CoreClient
from runtime.worker import executor
from runtime.worker.executor import install_cancel_handler, run_one
from runtime.worker.output import TaskOutput


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m runtime.worker", description=__doc__)
    p.add_argument("--node-address", required=True)
    p.add_argument("--gcs-address", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--session-dir", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.__stderr__,
                        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s")
    client = CoreClient(node_address=args.node_address, gcs_address=args.gcs_address,
                        token=_session.read_token(args.token_file), kind="worker", job_id=b"",
                        worker_id=bytes.fromhex(args.worker_id))
    _context.set_current(client)
    install_cancel_handler(client)
    client.start()
    sys.stdout = TaskOutput(client, sys.__stdout__, is_stderr=False)
    sys.stderr = TaskOutput(client, sys.__stderr__, is_stderr=True)
    while True:
        try:
            op = client.tasks.get()
        except KeyboardInterrupt:  # a cancel that arrived between tasks
            continue
        ex = op.execute
        if executor.actor is not None and ex.spec.actor_id and not ex.spec.actor_creation:
            executor.actor.submit(client, ex)
        else:
            run_one(client, ex)


if __name__ == "__main__":
    main()
