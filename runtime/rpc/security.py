"""Which transport this process's servers and channels use: plaintext or mutual TLS.

Channels are opened in many places (the GCS client, a node's peers, a driver's session
to its node, the schedulers' node clients), and all of them must follow the choice of the
cluster the process belongs to. So the choice is the process's, taken in this order:

1. the transport last ``install``-ed and not yet ``uninstall``-ed: ``rt.init(bundle=...)``
   installs the bundle's, ``LocalCluster(tls=True)`` its own for the clients of the process
   that started it (the supervision thread, an ``rt.init`` driver);
2. else the settings ``tls_dir`` and ``insecure`` (``CELLRAY_TLS_DIR``,
   ``CELLRAY_INSECURE``). This is how every daemon gets it: launchers pass their settings
   to their children through the environment (``Settings.to_env``), and the workers a
   node starts inherit the node's;
3. else plaintext, which servers accept on loopback addresses only.

``connect`` and ``create_server`` also take a ``transport`` of their own (tests use it).
A process works with one cluster's transport at a time.

Binding off loopback (``check_bind``): with TLS, fine; plaintext only with ``insecure``,
and then the daemon logs a warning and the command that started it (``cellray start``,
``LocalCluster``) prints one on its console (``warn_insecure``); without it the server
refuses with ``InsecureBindError``, saying how to turn TLS on.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

import psutil

from runtime import config
from runtime.exceptions import ClusterError, ConfigError

if TYPE_CHECKING:  # runtime._tls imports cryptography (~60 ms): only processes with TLS load it
    from runtime import _tls

logger = logging.getLogger(__name__)

__all__ = [
    "PLAINTEXT",
    "InsecureBindError",
    "Transport",
    "check_bind",
    "current",
    "from_settings",
    "install",
    "is_loopback",
    "uninstall",
    "warn_insecure",
]


class InsecureBindError(ClusterError, PermissionError):
    """A server was asked to bind a non-loopback address without TLS and without ``insecure``."""


@dataclass(frozen=True)
class Transport:
    """Plaintext (``identity`` None) or mutual TLS with ``identity``; ``insecure`` lets
    plaintext servers bind non-loopback addresses."""

    identity: _tls.Identity | None = None
    insecure: bool = False

    @property
    def tls(self) -> bool:
        return self.identity is not None


#: No TLS, loopback only.
PLAINTEXT = Transport()

_lock = threading.Lock()
_installed: list[Transport] = []


def install(transport: Transport) -> Transport:
    """Make ``transport`` this process's until ``uninstall(transport)``; return it."""
    with _lock:
        _installed.append(transport)
    return transport


def uninstall(transport: Transport) -> None:
    """Undo ``install(transport)`` (the latest one of that object; no-op if none)."""
    with _lock:
        for i in range(len(_installed) - 1, -1, -1):
            if _installed[i] is transport:
                del _installed[i]
                return


def current() -> Transport:
    """This process's transport (see the module doc for the order)."""
    with _lock:
        if _installed:
            return _installed[-1]
    insecure = os.environ.get(config.env_name("insecure"), "0")
    return _from_env(os.environ.get(config.env_name("tls_dir"), ""), insecure)


@functools.lru_cache(maxsize=8)
def _from_env(tls_dir: str, insecure: str) -> Transport:
    try:
        flag = int(insecure)
    except ValueError:
        flag = -1
    wrong = config.requirement("insecure", flag)
    if wrong is not None:
        raise ConfigError(f"environment variable {config.env_name('insecure')}={insecure!r}: {wrong}",
                          setting="insecure")
    if not tls_dir:
        return Transport(None, insecure=bool(flag))
    from runtime import _tls

    return Transport(_tls.load_dir(tls_dir), insecure=bool(flag))


def from_settings(settings: config.Settings) -> Transport:
    """The transport ``settings`` ask for (``tls_dir``, ``insecure``); TLS files are checked."""
    return _from_env(settings.tls_dir, str(settings.insecure))


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


#: Bind addresses meaning "every interface".
_WILDCARDS = ("0.0.0.0", "::", "[::]")


def advertised_host(host: str, toward: str = "") -> str:
    """The host others reach a server bound to ``host`` at: ``host`` itself, or for a
    wildcard (``0.0.0.0``) this machine's address on the way to ``toward`` (``host:port``,
    the GCS), else its first address that is not loopback (a wildcard must never be
    advertised: a peer would connect to itself)."""
    if host not in _WILDCARDS:
        return host
    target = toward.rpartition(":")[0].strip("[]")
    if target and target not in _WILDCARDS and not is_loopback(target):
        try:  # a UDP "connect" sends nothing: it only picks the route, and so our address
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                return str(probe.getsockname()[0])
        except OSError:
            pass
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not is_loopback(a.address):
                return str(a.address)
    return "127.0.0.1"


HOW_TO_TLS = ("start the cluster with TLS (`cellray start --head --tls`, LocalCluster(tls=True)) and "
              "join with its bundle (`cellray start --address HOST:PORT --bundle FILE`)")


def check_bind(host: str, port: int, *, tls: bool, insecure: bool) -> None:
    """Raise ``InsecureBindError`` unless servers may bind ``host:port``: loopback, or
    with ``tls``, or plaintext with ``insecure``."""
    if tls or insecure or is_loopback(host):
        return
    raise InsecureBindError(
        f"refusing to serve {host}:{port} without TLS: anyone who can reach that address could "
        f"read the cluster's traffic (its token and pickled code). Either {HOW_TO_TLS}, or bind "
        "127.0.0.1, or accept plaintext on a network you trust with --insecure (insecure=True).",
        address=f"{host}:{port}")


_warned: set[str] = set()


def warn_insecure(host: str, stream: TextIO | None = None) -> bool:
    """Print, once per process and address, that servers on ``host`` run without TLS;
    True if it printed. A no-op for loopback addresses."""
    if is_loopback(host):
        return False
    with _lock:
        if host in _warned:
            return False
        _warned.add(host)
    print(f"cellray: WARNING: serving on {host} WITHOUT TLS (--insecure): anyone who can reach it "
          f"can read the cluster's traffic, its token included. To turn TLS on, {HOW_TO_TLS}.",
          file=stream or sys.stderr, flush=True)
    return True


#: What ``attach`` installed for this process's driver (``detach`` removes it).
_attached: list[Transport] = []


def attach(address: str, token_file: str | None, bundle: str | None) -> str:
    """The token to reach the cluster at ``address`` as a driver, and its transport installed
    until ``detach()``: the join bundle's (``bundle``: token, CA, certificate), else the TLS
    files of the local session of ``address``, else none (plaintext).

    Raises ``ValueError`` when both ``token_file`` and ``bundle`` are given, ``ConfigError``
    (a ``ValueError``) for a bad bundle or TLS files, ``TokenFileError`` for a missing token.
    """
    from runtime import _session

    if bundle is not None and token_file is not None:
        raise ValueError("pass bundle= or token_file=, not both: the join bundle holds the token")
    if bundle is not None:
        from runtime import _tls

        joined = _tls.read_bundle(bundle)
        _attached.append(install(Transport(joined.identity)))
        return joined.token
    assert token_file is not None, "without a bundle the caller finds the token file"
    token = _session.read_token(token_file)
    session = _session.find_session_for(address)
    if session is not None and (session / "tls").is_dir():
        from runtime import _tls

        _attached.append(install(Transport(_tls.load_dir(_tls.tls_dir_of(session)))))
    return token


def detach() -> None:
    """Remove what ``attach`` installed (no-op when nothing)."""
    while _attached:
        uninstall(_attached.pop())
