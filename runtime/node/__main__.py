"""``python -m runtime.node``: run one node manager until told to stop.

::

    python -m runtime.node --gcs-address HOST:PORT --token-file FILE --session-dir DIR \\
        [--host 127.0.0.1] [--port 0] [--num-cpus N] [--num-gpus N] [--resources JSON] \\
        [--object-store-memory BYTES] [--prestart N] [--parent-pid PID] [--ready-file PATH]

Once serving and registered with the GCS, it writes the ready file (``{"port", "pid",
"address", "node_id", "shm_dir"}``). SIGTERM or SIGINT stop it gracefully (its workers
first); ``kill -USR1 <pid>`` writes a snapshot of the local scheduler to its log. Every
tuning value comes from ``CELLRAY_*`` (``Settings``); start-up and stop are
``runtime._daemon``'s.

A node the GCS declared dead (paused or cut off past the heartbeat timeout) is *fenced*
(``runtime.gcs.fencing``): its manager stops every worker and drops what it held, and the
process rejoins the cluster as a new node, with a new id, a new server (a new port unless
``--port`` fixes it) and nothing running; the ready file is written again. Drivers that
were connected to it lose their session with ``ConnectionLostError`` saying why.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

import psutil

from runtime import _ids, config
from runtime._daemon import Daemon, DaemonContext
from runtime.node.gpus import Gpus
from runtime.node.manager import NodeManager
from runtime.node.service import NodeServicer
from runtime.protocol import node_pb2_grpc

logger = logging.getLogger("runtime.node")


def default_store_capacity(settings: config.Settings) -> int:
    """``store_memory_fraction`` of memory, but never more than ``store_shm_fraction`` of /dev/shm."""
    mem = psutil.virtual_memory().total
    st = os.statvfs("/dev/shm")
    shm = st.f_blocks * st.f_frsize
    return int(min(mem * settings.store_memory_fraction, shm * settings.store_shm_fraction))


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gcs-address", required=True, help="host:port of the GCS")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs to offer (default: this machine's)")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs to offer (default: those found)")
    p.add_argument("--resources", default=None, help="JSON object of custom resources, e.g. '{\"sim\": 4}'")
    p.add_argument("--object-store-memory", type=int, default=None,
                   help="object store bytes (default: a fraction of memory, see store_memory_fraction)")
    p.add_argument("--prestart", type=int, default=None, help="workers to start at once (default: the CPUs)")


def _check(args: argparse.Namespace) -> str | None:
    if args.resources:
        try:
            extra = json.loads(args.resources)
        except json.JSONDecodeError as e:
            return f"--resources must be a JSON object like '{{\"sim\": 4}}': {e}"
        if not isinstance(extra, dict) or not all(
                isinstance(v, (int, float)) and v >= 0 for v in extra.values()):
            return "--resources must map names to non-negative numbers"
    if args.num_gpus is not None and (args.num_gpus < 0 or args.num_gpus != int(args.num_gpus)):
        return f"--num-gpus must be a whole number >= 0, got {args.num_gpus}"
    return None


DAEMON = Daemon("node", prog="python -m runtime.node", description="Run one cellray node manager.",
                add_arguments=_arguments, check=_check, ready_file="optional")


def parse_resources(args: argparse.Namespace) -> dict[str, float]:
    """The resources the node offers: ``--resources`` (checked by ``_check``) and its CPUs."""
    resources: dict[str, float] = {}
    if args.resources:
        resources.update({str(k): float(v) for k, v in json.loads(args.resources).items()})
    resources["CPU"] = float(args.num_cpus if args.num_cpus is not None else os.cpu_count() or 1)
    return resources


async def serve(ctx: DaemonContext) -> None:
    """Serve the node until a stop is requested (signal, parent gone, Shutdown RPC); a fenced
    node rejoins as a new one (see the module docstring)."""
    args, settings = ctx.args, ctx.settings
    resources = parse_resources(args)
    gpus = Gpus(declared=None if args.num_gpus is None else int(args.num_gpus),
                visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
    if gpus.count:
        resources["GPU"] = float(gpus.count)
    capacity = args.object_store_memory or default_store_capacity(settings)
    # Ray's "memory" resource: what tasks may ask for with memory=, in bytes (the RAM the
    # object store leaves), unless --resources says otherwise.
    resources.setdefault("memory", float(max(psutil.virtual_memory().total - capacity, 0)))
    prestart = args.prestart if args.prestart is not None else int(resources.get("CPU", 1))
    current: list[NodeManager] = []  # the manager of this process's node now

    def stop() -> None:
        if current:
            current[-1].request_stop()

    def dump() -> None:  # `kill -USR1 <pid>` writes a snapshot of the scheduler's state to the log
        if current:
            logger.warning("state: %s", current[-1].statistics())

    ctx.on_stop(stop)
    ctx.on_signal(signal.SIGUSR1, dump)
    while not ctx.stopping.is_set():
        servicer = NodeServicer()  # the manager needs the bound port, so it is attached below
        _, port = await ctx.serve([(node_pb2_grpc.add_NodeManagerServicer_to_server, servicer)])
        node_id, address = _ids.new_id(), ctx.address(port)
        manager = NodeManager(node_id=node_id, address=address, gcs_address=args.gcs_address,
                              token=ctx.token, token_file=args.token_file, session_dir=ctx.session_dir,
                              resources=resources, store_capacity=capacity, gpus=gpus, settings=settings)
        manager.state.resources.gpu_ids = list(gpus.ids)
        servicer.attach(manager)
        current[:] = [manager]
        await manager.start(prestart)
        logger.info("node %s listening on %s with %s", node_id.hex()[:12], address, resources)
        ctx.ready(port, node_id=node_id.hex(), shm_dir=str(manager.shm_dir))
        if ctx.stopping.is_set():  # asked to stop while starting
            manager.request_stop()
        await manager.stop_requested.wait()
        logger.info("stopping" if manager.fenced is None else "stopping the fenced node")
        await manager.stop()
        await ctx.stop_servers()
        if manager.fenced is None:
            break
        logger.warning("rejoining the cluster as a new node (node %s was fenced)", node_id.hex()[:12])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m runtime.node``."""
    return DAEMON.run(serve, argv)


if __name__ == "__main__":
    sys.exit(main())
