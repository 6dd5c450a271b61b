"""Client channels: one per peer address, every call carrying the cluster token."""

from __future__ import annotations

import grpc

from runtime.rpc.interceptors import TOKEN_KEY
from runtime.rpc.server import MAX_MESSAGE, channel_options


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata to pass as ``metadata=`` on every call."""
    return ((TOKEN_KEY, token),)


def connect(address: str, *, max_message_bytes: int = MAX_MESSAGE) -> grpc.aio.Channel:
    """An aio channel to ``host:port`` (must be created on the loop that will use it).

    ``max_message_bytes`` is ``Settings.max_message_bytes`` (both ends should agree).
    """
    return grpc.aio.insecure_channel(address, options=channel_options(max_message_bytes))
