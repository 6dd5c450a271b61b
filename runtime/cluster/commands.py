"""What the ``cellray`` commands do, without the argument parsing (``runtime.cli`` parses).

Each function either returns what it did or raises ``CommandError`` with a message that
says what failed and what to do next; ``runtime.cli`` prints it and exits with code 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import socket
import time
from dataclasses import dataclass

from runtime import _session, _tls, config
from runtime.cluster import registry, status
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.cluster.process import ProcessStartError
from runtime.cluster.restarts import RestartCounts
from runtime.cluster.supervision import read_status
from runtime.exceptions import ClusterError, ConnectionLostError
from runtime.rpc import security

__all__ = [
    "DEFAULT_PORT",
    "RESTART_WAIT_S",
    "Attached",
    "CommandError",
    "add_nodes",
    "cluster_status",
    "port_free",
    "resolve_address",
    "running_addresses",
    "start_head",
    "stop_all",
    "stop_cluster",
]

#: The head's port when ``--port`` is not given (Ray uses 6379; one up, so both can run).
DEFAULT_PORT = 6380
#: Seconds ``cluster_status`` waits for a GCS that its head is restarting.
RESTART_WAIT_S = 15.0


class CommandError(Exception):
    """A command could not do its work; the message says why and what to do next."""


def _root() -> pathlib.Path:
    # Read at call time: tests and tools may point ROOT elsewhere after import.
    return _session.ROOT


def port_free(host: str, port: int) -> bool:
    """True if ``host:port`` can be bound now (``SO_REUSEADDR``, as gRPC binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _settings() -> config.Settings:
    try:
        return config.load()
    except ValueError as err:
        raise CommandError(str(err)) from err


def start_head(spec: NodeSpec, *, num_nodes: int = 1, host: str = "127.0.0.1",
               port: int | None = None, global_schedulers: int | None = None,
               gcs_storage: str | None = None, redis_shards: int | None = None,
               tls: bool | None = None, insecure: bool = False) -> LocalCluster:
    """Start a detached cluster (GCS and ``num_nodes`` nodes); it runs until ``stop_cluster``.

    ``port`` None means ``DEFAULT_PORT``, which must be free; 0 picks any free port.
    ``gcs_storage`` and ``redis_shards`` choose where the GCS keeps its tables (None: the
    settings', by default SQLite in the session directory); the head process restarts
    the GCS from them when it dies. ``tls`` makes the cluster's CA and join bundle and
    runs every channel over mutual TLS; None (the default) turns it on exactly when
    ``host`` is not a loopback address and ``insecure`` is not given (safe by default off
    this machine). ``tls=False`` off loopback needs ``insecure`` (a warning is printed on
    stderr), else ``CommandError`` says how.
    """
    insecure = insecure or bool(_settings().insecure)
    if tls is None:
        tls = not insecure and not security.is_loopback(host)
    try:
        security.check_bind(host, port or DEFAULT_PORT, tls=tls, insecure=insecure)
    except security.InsecureBindError as err:
        raise CommandError(_cli_terms(str(err))) from err
    if port is None:
        if not port_free(host, DEFAULT_PORT):
            raise CommandError(
                f"the default port {DEFAULT_PORT} on {host} is in use (another cluster? "
                "`cellray status` lists the ones on this machine). Pass --port PORT, or "
                "--port 0 to pick a free one.")
        port = DEFAULT_PORT
    elif port != 0 and not port_free(host, port):
        raise CommandError(f"port {port} on {host} is in use; pass another --port, or "
                           "--port 0 to pick a free one.")
    try:
        cluster = LocalCluster([spec] * num_nodes, host=host, port=port, settings=_settings(),
                               detach=True, global_schedulers=global_schedulers,
                               gcs_storage=gcs_storage, redis_shards=redis_shards,
                               tls=tls, insecure=insecure)
    except ValueError as err:  # ConfigError: a storage URL or shard count that cannot work
        raise CommandError(str(err)) from err
    try:
        return cluster.start()  # stops what it started when it fails
    except ProcessStartError as err:
        raise CommandError(f"could not start the cluster: {err}") from err


def _cli_terms(message: str) -> str:
    """An ``InsecureBindError``'s message with the command line's words only."""
    return message.replace(", LocalCluster(tls=True)", "").replace(" (insecure=True)", "")


def _transport(tls_dir: pathlib.Path | None) -> security.Transport:
    """Mutual TLS with the files in ``tls_dir``, or plaintext when None."""
    if tls_dir is None:
        return security.PLAINTEXT
    try:
        return security.Transport(_tls.load_dir(tls_dir))
    except ValueError as err:
        raise CommandError(str(err)) from err


def _check_head(address: str, token: str,
                transport: security.Transport = security.PLAINTEXT) -> status.ClusterStatus:
    """The head's status, asked over ``transport``."""
    security.install(transport)
    try:
        return asyncio.run(status.fetch(address, token))
    except ConnectionLostError as err:
        hint = ("" if transport.tls else " If that cluster runs with TLS (`cellray start --head "
                "--tls`), pass --bundle FILE with the join bundle its head printed.")
        raise CommandError(f"{err}{hint}") from err
    except (ClusterError, PermissionError, TimeoutError) as err:
        raise CommandError(str(err)) from err
    finally:
        security.uninstall(transport)


def _local_tls(session: pathlib.Path | None) -> pathlib.Path | None:
    """The TLS directory of a local session, when it has one."""
    if session is None or not _tls.tls_dir_of(session).is_dir():
        return None
    return _tls.tls_dir_of(session).resolve()


def _read_bundle(bundle: str) -> _tls.Bundle:
    try:
        return _tls.read_bundle(bundle)
    except ValueError as err:
        raise CommandError(str(err)) from err


def _token_file(address: str, token_file: str | None) -> tuple[pathlib.Path, pathlib.Path | None]:
    """The token file to use for ``address``, and the local session of that address (or None)."""
    session = _session.find_session_for(address, _root())
    if session is not None:
        session = session.resolve()  # never the session_latest link: it moves
    if token_file is not None:
        path = pathlib.Path(token_file).expanduser().resolve()
        if not path.is_file():
            raise CommandError(f"token file {path} does not exist; pass the token file that "
                               "`cellray start --head` printed.")
        return path, session
    if session is None or not (session / "token").is_file():
        raise CommandError(
            f"no token for the cluster at {address}: no session directory under {_root()} has "
            "that address. Pass --token-file PATH (the token file `cellray start --head` printed), "
            "or check the address with `cellray status`.")
    return session / "token", session


def _node_only_session(address: str, token: str) -> pathlib.Path:
    """A new session for nodes joined to a head elsewhere: its address, the token, logs."""
    session = _session.new_session_dir(_root())
    (session / "address").write_text(address)
    fd = os.open(session / "token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return session


@dataclass(frozen=True)
class Attached:
    """What ``add_nodes`` started."""

    cluster: LocalCluster
    session_dir: pathlib.Path
    token_file: pathlib.Path
    #: Live nodes in the cluster before these were added.
    nodes_before: int


def add_nodes(address: str, spec: NodeSpec, *, count: int = 1, token_file: str | None = None,
              host: str = "127.0.0.1", bundle: str | None = None, insecure: bool = False) -> Attached:
    """Start ``count`` detached node managers joined to the running head at ``address``.

    The token is read from ``bundle`` (a join bundle: token, CA and a member certificate;
    the nodes then use TLS), from ``token_file``, or from the local session of ``address``
    (with its TLS files when it has some). The nodes log to that session (or to a new one
    when the head runs on another machine, the bundle's TLS files written in its ``tls/``)
    and are recorded in its processes.json, so ``cellray stop`` stops them. A non-loopback
    ``host`` without TLS needs ``insecure``.
    """
    joined: _tls.Bundle | None = None
    if bundle is not None:
        if token_file is not None:
            raise CommandError("--bundle holds the cluster token already: drop --token-file")
        joined = _read_bundle(bundle)
        session = _session.find_session_for(address, _root())
        session = session.resolve() if session is not None and _local_tls(session) else None
        token = joined.token
        path = session / "token" if session is not None else None
    else:
        path, session = _token_file(address, token_file)
        try:
            token = _session.read_token(path)
        except OSError as err:
            raise CommandError(f"could not read the token file {path}: {err}") from err
    tls_dir = _local_tls(session)
    try:
        security.check_bind(host, 0, tls=tls_dir is not None or joined is not None,
                            insecure=insecure or bool(_settings().insecure))
    except security.InsecureBindError as err:
        raise CommandError(_cli_terms(str(err))) from err
    if joined is not None and tls_dir is None:
        # The head runs elsewhere: check it with the bundle's files, kept in a new session.
        session = _node_only_session(address, token)
        try:
            tls_dir = _tls.install_bundle(joined, session).resolve()
            before = _check_head(address, token, _transport(tls_dir))
        except BaseException:  # no node will use them: the copies of the secrets go
            _session.remove_secrets(session)
            raise
        path = session / "token"
    else:
        before = _check_head(address, token, _transport(tls_dir))
    if session is None:
        session = _node_only_session(address, token)
        path = session / "token"
    assert path is not None
    settings = _settings().override(tls_dir=str(tls_dir) if tls_dir is not None else None,
                                    insecure=1 if insecure else None)
    cluster = LocalCluster.attach(address, token_file=path, session_dir=session, host=host,
                                  settings=settings, detach=True)
    try:
        for _ in range(count):
            cluster.add_node(spec)
    except ProcessStartError as err:
        cluster.stop()
        raise CommandError(f"could not start a node for the cluster at {address}: {err}") from err
    except BaseException:  # ^C while waiting: leave nothing half-started behind
        cluster.stop()
        raise
    return Attached(cluster, session, path, sum(1 for n in before.nodes if n.alive))


def running_addresses() -> list[str]:
    """GCS addresses of the clusters running here: heads first, then heads elsewhere with nodes here."""
    found = registry.running_heads(_root()) + registry.running_nodes_only(_root())
    return list(dict.fromkeys(address for _, address in found))


def resolve_address(address: str | None) -> str:
    """``address``, else ``CELLRAY_ADDRESS``, else the newest cluster running here."""
    address = address or os.environ.get("CELLRAY_ADDRESS") or None
    if address:
        return address
    running = running_addresses()
    if running:
        return running[0]
    raise CommandError(f"no cellray cluster is running on this machine (no live head or node "
                       f"in a session under {_root()}). Start one with `cellray start --head`, or "
                       "pass --address HOST:PORT for a cluster elsewhere.")


def cluster_status(address: str | None, token_file: str | None = None,
                   bundle: str | None = None) -> status.ClusterStatus:
    """The status of the cluster at ``address`` (see ``resolve_address``), asked with the
    token and TLS files of ``bundle``, ``token_file`` or the local session of ``address``.

    When the GCS does not answer and its head runs on this machine, a head that is
    restarting it is given ``RESTART_WAIT_S`` seconds; a head that no longer restarts it
    is named in the message, with why.
    """
    address = resolve_address(address)
    if bundle is not None:
        joined = _read_bundle(bundle)
        return _check_head(address, joined.token, security.Transport(joined.identity))
    path, session = _token_file(address, token_file)
    try:
        token = _session.read_token(path)
    except OSError as err:
        raise CommandError(f"could not read the token file {path}: {err}") from err
    deadline = time.monotonic() + RESTART_WAIT_S
    while True:
        try:
            return _check_head(address, token, _transport(_local_tls(session)))
        except CommandError as err:
            if time.monotonic() > deadline or not _restarting(session):
                raise CommandError(f"{err}{_head_report(session)}") from err
        time.sleep(0.1)


def _restarting(session: pathlib.Path | None) -> bool:
    """True while the session's head supervisor runs and still restarts the GCS."""
    rec = registry.read(session) if session is not None else None
    if session is None or rec is None or rec.supervisor is None:
        return False
    report = read_status(session) or {}
    return (not RestartCounts.decode(json.dumps(report).encode()).not_restarted.get("gcs")
            and registry.is_cluster_process(rec.supervisor, session, "supervisor"))


def _head_report(session: pathlib.Path | None) -> str:
    """What the session's supervisor reported about a GCS it no longer restarts ("" if nothing)."""
    report = read_status(session) if session is not None else None
    if report is None:
        return ""
    why = RestartCounts.decode(json.dumps(report).encode()).not_restarted.get("gcs")
    if why is None:
        return ""
    assert session is not None
    return (f"\nThe head no longer restarts the GCS: {why}. Its log: {session / 'logs' / 'gcs.log'}. "
            "Fix the cause, then `cellray stop` and `cellray start --head` (with the same "
            "--gcs-storage to keep the tables).")


def stop_all() -> list[registry.StoppedProcess]:
    """Stop every process ``cellray start`` started on this machine: nodes, then heads."""
    return registry.stop_detached(_root())


def stop_cluster(address: str | None = None) -> list[registry.StoppedProcess]:
    """Stop the processes ``cellray start`` started here for one cluster; [] when none run.

    The cluster is the one at ``address``, else ``CELLRAY_ADDRESS``, else the newest one
    with such processes here (``session_latest`` when it has them). Raises
    ``CommandError`` when an address was given and nothing of its cluster can be stopped.
    """
    address = address or os.environ.get("CELLRAY_ADDRESS") or None
    detached = registry.detached_sessions(_root())
    if address is None:
        if not detached:
            return []
        address = detached[0][1]
        if not address:  # a session without its address file: stop that session alone
            return registry.stop_sessions([detached[0][0]])
    ours = [d for d, a in detached if a and registry.same_address(a, address)]
    if not ours:
        raise CommandError(_nothing_to_stop(address, [a for _, a in detached if a]))
    return registry.stop_sessions(ours)


def _nothing_to_stop(address: str, detached: list[str]) -> str:
    if any(registry.same_address(a, address) for _, a in registry.running_heads(_root())):
        return (f"the cluster at {address} was started by a driver (rt.init() or `%cluster "
                "start`), not by `cellray start`: it stops with its driver (rt.shutdown() or "
                "`%cluster stop`).")
    others = (f"`cellray start` clusters running here: {', '.join(dict.fromkeys(detached))}"
              if detached else "no `cellray start` cluster runs here")
    return (f"no process of the cluster at {address} runs on this machine ({others}). "
            "Check the address with `cellray status`.")
