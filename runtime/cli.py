"""The ``cellray`` command line (also ``python -m runtime``).

::

    cellray start --head [--port 6380] [--host 127.0.0.1] [--cpus N] [--gpus N] [--global-schedulers R]
                  [--resources '{"sim": 4}'] [--object-store-memory BYTES] [--num-nodes N]
                  [--gcs-storage sqlite | sqlite:///PATH.db | redis://H:P,H:P | memory] [--redis-shards N]
                  [--tls | --insecure]
    cellray start --address HOST:PORT [--token-file F | --bundle FILE] [--insecure]
                  [--cpus N] [--gpus N] [--resources JSON]
    cellray status [--address HOST:PORT] [--token-file F | --bundle FILE]
    cellray stop [--address HOST:PORT | --all]
    cellray bench [ARGS...]

The head keeps its tables where ``--gcs-storage`` says (default: SQLite in the session
directory), or in ``--redis-shards N`` local Redis servers it starts and owns; its GCS is
restarted from them, on the same address, when it dies. ``cellray status`` shows the
storage and the restarts. ``cellray stop`` stops the cluster ``cellray status`` shows (the
newest one started here, or the one ``--address`` names); ``--all`` stops every one.

``--tls`` makes the cluster's CA and certificates (``runtime._tls``) and runs every
channel over mutual TLS; the head prints its join bundle, which nodes (``--bundle``) and
drivers (``rt.init(address=..., bundle=...)``) on other machines take. A head bound to a
non-loopback ``--host`` uses TLS without being asked; ``--insecure`` keeps it plaintext (with
a warning). A node added off loopback needs the bundle, or ``--insecure``.

This module only parses and prints; ``runtime.cluster.commands`` does the work. Exit
codes: 0 success, 1 the command failed (the message says why), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import NoReturn

from runtime.cluster import commands
from runtime.cluster.local import NodeSpec
from runtime.cluster.status import format_status
from runtime.gcs.storage_url import ACCEPTED, storage_problem

__all__ = ["main"]

#: Where ``cellray bench`` looks for the micro-benchmarks: the source checkout's bench/.
BENCH_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "microbench.py"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ---- argument types: each raises ArgumentTypeError with what is accepted ----

def _resources(text: str) -> dict[str, float]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({err.msg} at position {err.pos}): {text!r}; "
            "expected an object like '{\"sim\": 4}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"sim\": 4}}', got {type(value).__name__} {text!r}")
    out: dict[str, float] = {}
    for name, amount in value.items():
        if name in ("CPU", "GPU"):
            raise argparse.ArgumentTypeError(f"set {name} with --{name.lower()}s, not --resources")
        if (isinstance(amount, bool) or not isinstance(amount, (int, float))
                or not math.isfinite(amount) or amount < 0):
            raise argparse.ArgumentTypeError(
                f"resource {name!r} must be a non-negative number, got {amount!r}")
        out[name] = float(amount)
    return out


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT with a port in 1..65535 (e.g. 127.0.0.1:6380), got {text!r}")
    return text


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535 (0: any free port), got {text!r}")
    return int(text)


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _storage(text: str) -> str:
    problem = storage_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return text.strip()


def build_parser() -> argparse.ArgumentParser:
    """The ``cellray`` parser with its subcommands."""
    from runtime import __version__

    p = _Parser(prog="cellray", description="Start, inspect and stop cellray clusters.")
    p.add_argument("--version", action="version", version=f"cellray {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{start,status,stop,bench}")

    start = sub.add_parser(
        "start", help="start a cluster's head, or add a node to a running cluster",
        description="Start a detached cluster (--head) or add node managers to a running one "
                    "(--address). The processes run until `cellray stop`.")
    role = start.add_mutually_exclusive_group()
    role.add_argument("--head", action="store_true", help="start a new cluster: GCS and node(s)")
    role.add_argument("--address", type=_address, metavar="HOST:PORT",
                      help="add a node to the running cluster whose GCS is at HOST:PORT")
    start.add_argument("--port", type=_port, default=None,
                       help=f"(--head) GCS port; default {commands.DEFAULT_PORT} when free, 0 for any")
    start.add_argument("--host", default="127.0.0.1",
                       help="address the servers bind to (default 127.0.0.1: this machine only)")
    start.add_argument("--token-file", metavar="FILE",
                       help="(--address) the cluster's token file; found by itself on the head's machine")
    start.add_argument("--bundle", metavar="FILE",
                       help="(--address) the join bundle a --tls head printed: token, CA and a "
                            "certificate; the node then uses TLS")
    security = start.add_mutually_exclusive_group()
    security.add_argument("--tls", action="store_true",
                          help="(--head) make a cluster CA and run every channel over mutual TLS "
                               "(on by itself when --host is not a loopback address)")
    security.add_argument("--insecure", action="store_true",
                          help="let servers bind a non-loopback --host without TLS (plaintext; "
                               "only on a network you trust)")
    start.add_argument("--cpus", type=_amount, help="CPUs each node offers (default: all cores)")
    start.add_argument("--gpus", type=_amount, help="GPUs each node offers (default 0; may be logical)")
    start.add_argument("--resources", type=_resources, default={}, metavar="JSON",
                       help="custom resources of each node, e.g. '{\"sim\": 4}'")
    start.add_argument("--object-store-memory", type=_positive_int, metavar="BYTES",
                       help="object store size of each node (default: 30%% of memory)")
    start.add_argument("--num-nodes", type=_positive_int, default=1,
                       help="node managers to start (default 1)")
    start.add_argument("--global-schedulers", type=_positive_int, default=None, metavar="R",
                       help="(--head) global scheduler replicas (default 2)")
    start.add_argument("--gcs-storage", type=_storage, default=None, metavar="URL",
                       help=f"(--head) where the GCS keeps its tables: {ACCEPTED} "
                            "(default sqlite: gcs.db in the session directory)")
    start.add_argument("--redis-shards", type=_positive_int, default=None, metavar="N",
                       help="(--head) start N local redis-server processes and keep the GCS's "
                            "shards in them (needs redis-server on the PATH)")
    start.set_defaults(func=_cmd_start, parser=start)

    status = sub.add_parser("status", help="show the nodes, resources and jobs of a cluster")
    status.add_argument("--address", type=_address, metavar="HOST:PORT",
                        help="the cluster's GCS (default: the newest cluster running here)")
    status.add_argument("--token-file", metavar="FILE", help="the cluster's token file")
    status.add_argument("--bundle", metavar="FILE", help="the cluster's join bundle (a --tls cluster)")
    status.set_defaults(func=_cmd_status, parser=status)

    stop = sub.add_parser(
        "stop", help="stop a cluster `cellray start` started on this machine",
        description="Stop the processes `cellray start` started on this machine for one cluster: "
                    "the newest one (or CELLRAY_ADDRESS's), the one --address names, or with "
                    "--all every one.")
    which = stop.add_mutually_exclusive_group()
    which.add_argument("--address", type=_address, metavar="HOST:PORT",
                       help="the cluster's GCS (default: the newest cluster started here)")
    which.add_argument("--all", action="store_true",
                       help="stop every cluster `cellray start` started on this machine")
    stop.set_defaults(func=_cmd_stop, parser=stop)

    bench = sub.add_parser("bench", help="run the micro-benchmarks (bench/microbench.py)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the benchmark script")
    bench.set_defaults(func=_cmd_bench, parser=bench)
    return p


# ---- commands: call runtime.cluster.commands, print the outcome ----

def _cmd_start(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.head and not args.address:
        parser.error("start needs --head (a new cluster) or --address HOST:PORT (add a node)")
    if args.address and args.port is not None:
        parser.error("--port is for --head; a node added with --address picks a free port")
    if args.address and args.tls:
        parser.error("--tls is for --head; a node added with --address uses TLS when given the "
                     "head's join bundle (--bundle FILE)")
    if args.head and args.bundle:
        parser.error("--bundle is for --address; a head started with --tls writes its own")
    if args.bundle and args.token_file:
        parser.error("--bundle holds the cluster token already: drop --token-file")
    for flag in ("gcs_storage", "redis_shards"):
        if args.address and getattr(args, flag) is not None:
            parser.error(f"--{flag.replace('_', '-')} is for --head; the head chose its storage "
                         "when it started (`cellray status` shows it)")
    if args.gcs_storage is not None and args.redis_shards is not None:
        parser.error("--redis-shards starts Redis servers for the GCS's tables, so it does not go "
                     "with --gcs-storage; to use Redis servers that run already, pass "
                     "--gcs-storage redis://HOST:PORT,HOST:PORT")
    spec = NodeSpec(num_cpus=args.cpus, num_gpus=args.gpus, resources=args.resources,
                    object_store_memory=args.object_store_memory)
    if args.head:
        cluster = commands.start_head(spec, num_nodes=args.num_nodes, host=args.host, port=args.port,
                                      global_schedulers=args.global_schedulers,
                                      gcs_storage=args.gcs_storage, redis_shards=args.redis_shards,
                                      tls=True if args.tls else None, insecure=args.insecure)
        _print_started(cluster.address, cluster.session_dir, cluster.token_file, len(cluster.nodes),
                       cluster.storage, cluster.bundle)
        return 0
    got = commands.add_nodes(args.address, spec, count=args.num_nodes,
                             token_file=args.token_file, host=args.host, bundle=args.bundle,
                             insecure=args.insecure)
    for handle, info in zip(got.cluster.nodes, got.cluster.node_info, strict=False):
        print(f"Added node {info.get('node_id', '?')[:12]} at {info.get('address', '?')} "
              f"(pid {handle.pid}) to the cluster at {args.address}.")
    print(f"The cluster now has {got.nodes_before + len(got.cluster.nodes)} live node(s); "
          f"logs in {got.session_dir / 'logs'}.\nStop with: cellray stop --address {args.address}")
    return 0


def _print_started(address: str, session_dir: object, token_file: object, nodes: int,
                   storage: str, bundle: pathlib.Path | None = None) -> None:
    lost = ("; a GCS restart loses every table: pass --gcs-storage sqlite to keep them"
            if storage == "memory" else "")
    if bundle is not None:
        tls = f"  TLS:         on (mutual); join bundle: {bundle} (a secret: copy it like a password)\n"
        attach = f"bundle=\"{bundle}\""
        join = (f"    cellray start --address {address}"
                f"    (from another machine add --bundle with a copy of {bundle})\n")
    else:
        tls = "  TLS:         off (plaintext; `cellray start --head --tls` turns it on)\n"
        attach = f"token_file=\"{token_file}\""
        join = (f"    cellray start --address {address}"
                f"    (from another machine add --token-file with a copy of the token file)\n")
    print(f"Started a cellray cluster: head (GCS) at {address}, {nodes} node(s).\n"
          f"  session dir: {session_dir}\n"
          f"  token file:  {token_file}\n"
          f"{tls}"
          f"  storage:     {storage or 'unknown'} (the head restarts the GCS from it when it dies{lost})\n"
          f"\nAttach a driver (a script or a notebook):\n"
          f"    import runtime as rt\n"
          f"    rt.init(address=\"{address}\", {attach})\n"
          f"Add a node:\n"
          f"{join}"
          f"Inspect:  cellray status\n"
          f"Stop:     cellray stop --address {address}")


def _cmd_status(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.bundle and args.token_file:
        parser.error("--bundle holds the cluster token already: drop --token-file")
    status = commands.cluster_status(args.address, args.token_file, args.bundle)
    print(format_status(status))
    if not args.address and not os.environ.get("CELLRAY_ADDRESS"):
        others = [a for a in commands.running_addresses() if a != status.address]
        if others:
            print(f"(other clusters run on this machine: {', '.join(others)}; "
                  "pick one with --address)")
    return 0


def _cmd_stop(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    stopped = commands.stop_all() if args.all else commands.stop_cluster(args.address)
    if not stopped:
        print("Nothing to stop: no process started by `cellray start` is running on this machine.")
        return 0
    for p in stopped:
        what = {"head": "head (GCS)", "scheduler": "global scheduler",
                "supervisor": "head supervisor"}.get(p.role, "node manager")
        print(f"stopped {what} pid {p.pid} of the cluster at {p.address or '?'} ({p.session_dir.name})")
    clusters = list(dict.fromkeys(p.address or "?" for p in stopped))
    print(f"Stopped {len(stopped)} process(es) of the cluster(s) at {', '.join(clusters)}."
          if len(clusters) > 1 else
          f"Stopped {len(stopped)} process(es) of the cluster at {clusters[0]}.")
    others = [a for a in commands.running_addresses() if a not in clusters]
    if others:
        print(f"Still running on this machine: {', '.join(others)} (stop one with "
              "`cellray stop --address HOST:PORT`, all with `cellray stop --all`).")
    return 0


def _cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not BENCH_SCRIPT.is_file():
        print(f"cellray bench: {BENCH_SCRIPT} does not exist. The benchmarks live in the source "
              "checkout's bench/ directory; run this from an editable install of cellray "
              "(pip install -e .).", file=sys.stderr)
        return 1
    return subprocess.call([sys.executable, str(BENCH_SCRIPT), *args.args])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cellray`` command line; return its exit code (0 ok, 1 failed, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error (already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.func(args, args.parser)
        return code
    except SystemExit as exit_:  # a usage error found after parsing
        return exit_.code if isinstance(exit_.code, int) else 2
    except commands.CommandError as err:
        print(f"cellray {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cellray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
