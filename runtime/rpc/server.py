"""Creating and stopping grpc.aio servers the same way in every process."""

from __future__ import annotations

import ipaddress
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from runtime.rpc.interceptors import TokenInterceptor

logger = logging.getLogger(__name__)

#: Large enough for batches of inline objects; big objects go through shared memory.
MAX_MESSAGE = 512 * 1024 * 1024

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.so_reuseport", 0),
]


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def create_server(
    host: str,
    port: int,
    token: str,
    adders: Sequence[tuple[Callable[[Any, grpc.aio.Server], None], Any]],
) -> tuple[grpc.aio.Server, int]:
    """Start a token-checking server on ``host:port`` and return it with the bound port.

    ``adders`` pairs each generated ``add_XServicer_to_server`` with its servicer.
    Port 0 picks a free port. Binding a non-loopback host prints a warning: traffic is
    not encrypted and carries pickles, so only trusted networks should reach it.
    """
    if not _is_loopback(host):
        warnings.warn(
            f"binding {host}:{port} without TLS: anyone who can reach this address and "
            "holds the cluster token can run code here. Use 127.0.0.1 unless the network is trusted.",
            RuntimeWarning,
            stacklevel=2,
        )
    server = grpc.aio.server(interceptors=[TokenInterceptor(token)], options=CHANNEL_OPTIONS)
    for add, servicer in adders:
        add(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}: the address is in use or not available here")
    await server.start()
    return server, bound
