"""Several hosts on one machine: Linux network namespaces joined by a bridge.

``Hosts(names)`` makes, for each name, a network namespace with its own address on a
private /24 (``10.<a>.<b>.<i>``), wired by a veth pair to a bridge that lives in a
namespace of its own (nothing in this machine's own network changes). Every command run
on a host (``Hosts.popen``, ``Hosts.run``) also gets its own mount and UTS namespaces:
a private ``/dev/shm`` and its own hostname, so a process sees no shared memory of
another host and cellray cannot tell it shares a machine with them. ``cut(name)`` and
``mend(name)`` take a host's link down and up; ``close()`` deletes every namespace.

It needs root, ``ip`` (iproute2) and ``unshare`` (util-linux); ``why_not()`` says what is
missing, for the tests' skip message (which CI turns into a failure).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

__all__ = ["Hosts", "why_not"]

#: Runs ``"$@"`` with a private /dev/shm (tmpfs) and the hostname ``$HOSTNAME_`` (set by
#: ``Hosts``). ``ip netns exec`` already unshares the mount namespace (it remounts /sys);
#: ``unshare`` makes this command's own, so that /dev/shm stays private to it.
_WRAP = ('mount -t tmpfs -o size=2g,mode=1777 tmpfs /dev/shm && hostname "$HOSTNAME_" '
         '&& exec "$@"')


def why_not() -> str:
    """Why hosts cannot be made here ("" when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install -y {package})"
    probe = f"crprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return ""


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(("-n", ns) if ns else ()), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


class Hosts:
    """Hosts named ``names`` on one private network; see the module."""

    def __init__(self, names: Sequence[str]) -> None:
        tag = secrets.token_hex(3)
        self._tag = tag
        octets = secrets.randbelow(200) + 20, secrets.randbelow(250) + 1
        self.switch = f"cr{tag}sw"
        self.namespaces: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self._ports: dict[str, str] = {}
        try:
            _ip("netns", "add", self.switch)
            _ip("link", "add", "br0", "type", "bridge", ns=self.switch)
            _ip("link", "set", "br0", "up", ns=self.switch)
            for i, name in enumerate(names, start=1):
                ns, port = f"cr{tag}{name}", f"c{tag}p{i}"
                _ip("netns", "add", ns)
                self.namespaces[name] = ns
                _ip("link", "add", f"c{tag}h{i}", "type", "veth", "peer", "name", port)
                _ip("link", "set", f"c{tag}h{i}", "netns", ns, "name", "eth0")
                _ip("link", "set", port, "netns", self.switch)
                _ip("link", "set", port, "master", "br0", ns=self.switch)
                _ip("link", "set", port, "up", ns=self.switch)
                address = f"10.{octets[0]}.{octets[1]}.{i}"
                _ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
                _ip("link", "set", "eth0", "up", ns=ns)
                _ip("link", "set", "lo", "up", ns=ns)
                self.addresses[name] = address
                self._ports[name] = port
        except BaseException:
            self.close()
            raise

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on host ``name`` (its network, /dev/shm and hostname)."""
        return ["ip", "netns", "exec", self.namespaces[name], "unshare", "--mount", "--uts",
                "--propagation", "private", "sh", "-c", _WRAP, "sh", *argv]

    def env(self, name: str, base: dict[str, str]) -> dict[str, str]:
        return {**base, "HOSTNAME_": f"{name}-{self._tag}"}

    def popen(self, name: str, argv: Sequence[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
        """Start ``argv`` on host ``name``."""
        return subprocess.Popen(self.command(name, argv), env=self.env(name, env), text=True, **kw)

    def run(self, name: str, argv: Sequence[str], env: dict[str, str], timeout: float,
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on host ``name`` to its end; its output is captured."""
        return subprocess.run(self.command(name, argv), env=self.env(name, env), text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              check=False)

    def cut(self, name: str) -> None:
        """Take host ``name``'s link down: it reaches nobody and nobody reaches it."""
        _ip("link", "set", self._ports[name], "down", ns=self.switch)

    def mend(self, name: str) -> None:
        """Bring host ``name``'s link back up."""
        _ip("link", "set", self._ports[name], "up", ns=self.switch)

    def close(self) -> None:
        """Delete every namespace (a veth pair goes with its namespace)."""
        for ns in [*self.namespaces.values(), self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.namespaces.clear()

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
