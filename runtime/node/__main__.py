"""``python -m runtime.node``: run one node manager until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import psutil

from runtime import _ids, _session, config
from runtime.cluster.process import exit_with_parent, write_ready_file
from runtime.node.gpus import Gpus
from runtime.node.manager import NodeManager
from runtime.node.service import NodeServicer
from runtime.protocol import node_pb2_grpc
from runtime.rpc.server import create_server

logger = logging.getLogger("runtime.node")


def default_store_capacity() -> int:
    """30% of memory, but never more than 80% of /dev/shm."""
    mem = psutil.virtual_memory().total
    st = os.statvfs("/dev/shm")
    shm = st.f_blocks * st.f_frsize
    return int(min(mem * 0.3, shm * 0.8))


def parse_resources(args: argparse.Namespace) -> dict[str, float]:
    resources: dict[str, float] = {}
    if args.resources:
        try:
            extra = json.loads(args.resources)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--resources must be a JSON object like '{{\"sim\": 4}}': {e}")
        if not isinstance(extra, dict) or not all(
                isinstance(v, (int, float)) and v >= 0 for v in extra.values()):
            raise SystemExit("--resources must map names to non-negative numbers")
        resources.update({str(k): float(v) for k, v in extra.items()})
    resources["CPU"] = float(args.num_cpus if args.num_cpus is not None else os.cpu_count() or 1)
    if args.num_gpus is not None and (args.num_gpus < 0 or args.num_gpus != int(args.num_gpus)):
        raise SystemExit(f"--num-gpus must be a whole number >= 0, got {args.num_gpus}")
    return resources


async def run(args: argparse.Namespace) -> None:
    settings = config.load()
    token = _session.read_token(args.token_file)
    session_dir = Path(args.session_dir)
    node_id = _ids.new_id()
    resources = parse_resources(args)
    gpus = Gpus(declared=None if args.num_gpus is None else int(args.num_gpus))
    if gpus.count:
        resources["GPU"] = float(gpus.count)
    capacity = args.object_store_memory or default_store_capacity()
    servicer = NodeServicer()  # the manager needs the bound port, so it is attached below
    server, port = await create_server(args.host, args.port, token,
                                       [(node_pb2_grpc.add_NodeManagerServicer_to_server, servicer)])
    address = f"{args.host}:{port}"
    manager = NodeManager(node_id=node_id, address=address, gcs_address=args.gcs_address,
                          token=token, token_file=args.token_file, session_dir=session_dir,
                          resources=resources, store_capacity=capacity,
                          heartbeat_ms=settings.heartbeat_ms, event_flush_ms=settings.event_flush_ms,
                          gpus=gpus, spill_threshold=settings.spill_threshold)
    servicer.m = manager
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, manager.request_stop)
    # `kill -USR1 <pid>` writes a snapshot of the scheduler's state to the node's log.
    loop.add_signal_handler(signal.SIGUSR1,
                            lambda: logger.warning("state: %s", manager.state.statistics()))
    prestart = args.prestart if args.prestart is not None else int(resources.get("CPU", 1))
    await manager.start(prestart)
    logger.info("node %s listening on %s with %s", node_id.hex()[:12], address, resources)
    if args.ready_file:
        write_ready_file(args.ready_file, {"port": port, "pid": os.getpid(), "address": address,
                                           "node_id": node_id.hex(),
                                           "shm_dir": str(manager.shm_dir)})
    await manager.stop_requested.wait()
    logger.info("stopping")
    await manager.stop()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m runtime.node", description=__doc__)
    p.add_argument("--gcs-address", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--session-dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--num-cpus", type=float, default=None)
    p.add_argument("--num-gpus", type=float, default=None)
    p.add_argument("--resources", default=None, help="JSON object of custom resources")
    p.add_argument("--object-store-memory", type=int, default=None)
    p.add_argument("--prestart", type=int, default=None, help="workers to start at once")
    p.add_argument("--ready-file", default=None)
    p.add_argument("--parent-pid", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s node[{os.getpid()}] %(levelname)s %(name)s: %(message)s")
    if args.parent_pid:
        exit_with_parent(args.parent_pid)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
