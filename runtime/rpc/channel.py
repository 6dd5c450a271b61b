"""Client channels: one per peer address, every call carrying the cluster token."""

from __future__ import annotations

import grpc

from runtime.rpc.interceptors import TOKEN_KEY
from runtime.rpc.server import CHANNEL_OPTIONS


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata to pass as ``metadata=`` on every call."""
    return ((TOKEN_KEY, token),)


def connect(address: str) -> grpc.aio.Channel:
    """An aio channel to ``host:port`` (must be created on the loop that will use it)."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
