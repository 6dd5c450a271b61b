"""Creating and stopping grpc.aio servers the same way in every process."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from runtime.config import Settings
from runtime.rpc import security
from runtime.rpc.interceptors import TokenInterceptor
from runtime.rpc.malformed import MalformedRequests

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

#: Hosts this process already warned about serving in plaintext.
_warned: set[str] = set()


async def create_server(
    host: str,
    port: int,
    token: str,
    adders: Sequence[tuple[Callable[[Any, grpc.aio.Server], None], Any]],
    *,
    max_message_bytes: int = MAX_MESSAGE,
    transport: security.Transport | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start a token-checking server on ``host:port`` and return it with the bound port.

    ``adders`` pairs each generated ``add_XServicer_to_server`` with its servicer.
    Port 0 picks a free port; ``max_message_bytes`` is ``Settings.max_message_bytes``.
    ``transport`` (default: the process's, ``security.current()``) chooses mutual TLS or
    plaintext. Raises ``InsecureBindError`` (a ``PermissionError``) for a non-loopback
    ``host`` in plaintext without ``insecure``; with it, a warning is logged once.
    """
    transport = transport or security.current()
    security.check_bind(host, port, tls=transport.tls, insecure=transport.insecure)
    if not transport.tls and not security.is_loopback(host) and host not in _warned:
        _warned.add(host)
        logger.warning("serving %s:%s WITHOUT TLS (insecure): anyone who can reach it can read the "
                       "cluster's traffic; to turn TLS on, %s", host, port, security.HOW_TO_TLS)
    server = grpc.aio.server(interceptors=[TokenInterceptor(token), MalformedRequests()],
                             options=channel_options(max_message_bytes))
    for add, servicer in adders:
        add(servicer, server)
    if transport.identity is not None:
        bound = server.add_secure_port(f"{host}:{port}", transport.identity.server_credentials())
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}: the address is in use or not available here")
    await server.start()
    return server, bound
