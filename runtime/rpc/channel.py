"""Client channels: one per peer address, every call carrying the cluster token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from runtime.protocol import node_pb2_grpc
from runtime.rpc import security
from runtime.rpc.interceptors import TOKEN_KEY
from runtime.rpc.server import MAX_MESSAGE, channel_options


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata to pass as ``metadata=`` on every call."""
    return ((TOKEN_KEY, token),)


def connect(address: str, *, max_message_bytes: int = MAX_MESSAGE,
            options: Sequence[tuple[str, Any]] = (),
            transport: security.Transport | None = None) -> grpc.aio.Channel:
    """An aio channel to ``host:port`` (must be created on the loop that will use it).

    ``max_message_bytes`` is ``Settings.max_message_bytes`` (both ends should agree);
    ``options`` are added to the common ones. ``transport`` (default: the process's,
    ``security.current()``) chooses plaintext or mutual TLS. With TLS the server must
    prove it holds a certificate of the cluster's CA naming ``_tls.CLUSTER_NAME`` rather
    than ``address`` (why: the module doc of ``runtime._tls``).
    """
    transport = transport or security.current()
    opts = [*channel_options(max_message_bytes), *options]
    if transport.identity is None:
        return grpc.aio.insecure_channel(address, options=opts)
    from runtime._tls import CLUSTER_NAME  # loaded by the process's TLS transport already

    opts.append(("grpc.ssl_target_name_override", CLUSTER_NAME))
    return grpc.aio.secure_channel(address, transport.identity.channel_credentials(), options=opts)


class NodeClients:
    """One channel and ``NodeManager`` client per node address, opened on first use; shared
    by the processes that call many nodes (global schedulers, the GCS's reservations)."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[grpc.aio.Channel, Any]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def get(self, address: str) -> Any:
        """The ``NodeManager`` client of ``address`` (the generated class is untyped)."""
        entry = self._open.get(address)
        if entry is None:
            channel = connect(address)
            entry = self._open[address] = (channel, node_pb2_grpc.NodeManagerStub(channel))  # type: ignore[no-untyped-call]
        return entry[1]

    async def drop(self, address: str) -> None:
        """Close the channel of ``address`` (its node is likely gone)."""
        entry = self._open.pop(address, None)
        if entry is not None:
            await entry[0].close(None)

    async def close(self) -> None:
        """Close every channel."""
        entries, self._open = self._open, {}
        for channel, _ in entries.values():
            await channel.close(None)
