"""Creating and stopping grpc.aio servers the same way in every process."""

from __future__ import annotations

import ipaddress
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from runtime.config import Settings
from runtime.rpc.interceptors import TokenInterceptor

logger = logging.getLogger(__name__)

#: Large enough for batches of inline objects; big objects go through shared memory.
#: The default of ``Settings.max_message_bytes``.
MAX_MESSAGE = Settings.max_message_bytes


def channel_options(max_message_bytes: int = MAX_MESSAGE) -> list[tuple[str, Any]]:
    """The options of every server and channel: message size limits, no port reuse."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


#: ``channel_options()`` with the default message size.
CHANNEL_OPTIONS = channel_options()


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
    *,
    max_message_bytes: int = MAX_MESSAGE,
) -> tuple[grpc.aio.Server, int]:
    """Start a token-checking server on ``host:port`` and return it with the bound port.

    ``adders`` pairs each generated ``add_XServicer_to_server`` with its servicer.
    Port 0 picks a free port; ``max_message_bytes`` is ``Settings.max_message_bytes``.
    Binding a non-loopback host prints a warning: traffic is not encrypted and carries
    pickles, so only trusted networks should reach it.
    """
    if not _is_loopback(host):
        warnings.warn(
            f"binding {host}:{port} without TLS: anyone who can reach this address and "
            "holds the cluster token can run code here. Use 127.0.0.1 unless the network is trusted.",
            RuntimeWarning,
            stacklevel=2,
        )
    server = grpc.aio.server(interceptors=[TokenInterceptor(token)],
                             options=channel_options(max_message_bytes))
    for add, servicer in adders:
        add(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}: the address is in use or not available here")
    await server.start()
    return server, bound
