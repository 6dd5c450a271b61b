"""GcsClient: the async client of the GCS used by node managers, schedulers and drivers.

Create it on the event loop that will use it. Every call carries the cluster token, and
gRPC failures come out as the project's errors, mapped by ``runtime.rpc.errors.translate``
(the one mapping of status codes to ``runtime.exceptions``):

==========================  ==========================================================
server status               raised here
==========================  ==========================================================
UNAVAILABLE                 ``ConnectionLostError`` (names the address; is a cluster running?),
                            after waiting out an outage (below)
UNAUTHENTICATED             ``UnauthenticatedError`` (a ``PermissionError``; pass token_file)
INVALID_ARGUMENT            ``InvalidRequestError`` (a ``ValueError``)
NOT_FOUND                   ``NotFoundError`` (a ``LookupError``)
FAILED_PRECONDITION         ``NodeDiedError`` for a node the GCS declared dead (``heartbeat``,
                            ``register_node``): it must rejoin under a new id
RESOURCE_EXHAUSTED          ``ConnectionLostError`` (a subscriber fell behind; resubscribe)
DEADLINE_EXCEEDED           ``RpcTimeoutError`` (a ``TimeoutError``)
CANCELLED                   ``ClientClosedError`` when this client was closed during the call
anything else               ``InternalError``
==========================  ==========================================================

Through a GCS outage (the GCS killed, then restarted on the same address), every call
waits for it to come back: it tries again with a backoff (``runtime.gcs.reconnect``) for at
most ``Settings.gcs_outage_timeout_s`` from its first failure, then raises
``ConnectionLostError`` saying how long the GCS has been away. The outage is logged once
when it starts and once when it ends. A client that never reached its GCS fails at once
(there is no cluster there), unless it was made with ``wait_for_first_contact`` (node
managers, workers and schedulers, which may start while their GCS restarts).

Before the first call, and again after anything broke the connection, the client pings the
GCS and compares the cluster id it names with the first one seen. A GCS restarted without
persistence makes a new cluster: the client then refuses every call with
``ConnectionLostError`` (``cluster_restarted=True``; ``link.new_cluster`` holds it) saying
so and how to get a durable head, and calls ``on_new_cluster`` once. ``link.connections``
counts the pings that found the GCS (again): a process that sees it grow re-sends what the
GCS must know. Calls that would do something twice if repeated after their request reached the
GCS (``register_job``, ``create_placement_group``) are tried again only when they cannot
have been sent.

Actors, actor names, global-scheduler replicas and placement groups have typed calls
(``put_actor``, ``claim_actor_name``, ``register_scheduler``, ``create_placement_group``...:
the ``Actors``, ``Schedulers`` and ``PlacementGroups`` services); the GCS builds their
keys (``runtime.gcs.keys``), callers never do.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc

from runtime.config import Settings
from runtime.exceptions import ClientClosedError, ClusterError, ConnectionLostError
from runtime.gcs.reconnect import Link, RetryPolicy
from runtime.protocol import common_pb2, gcs_pb2, gcs_pb2_grpc
from runtime.rpc import errors
from runtime.rpc.channel import connect, token_metadata

logger = logging.getLogger(__name__)

__all__ = ["GcsClient"]

_T = TypeVar("_T")
_DEFAULTS = Settings()
#: Status codes of a GCS that is away (killed, restarting): try again once it is back.
_AWAY = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
#: Called with the ``ConnectionLostError`` that says the GCS came back as another cluster.
NewClusterHook = Callable[[ConnectionLostError], None]


async def _nothing() -> None:
    return None


def _rpc_client(client_class: Any, channel: grpc.aio.Channel) -> Any:
    """A generated rpc on ``channel`` (the generated gRPC modules carry no type hints)."""
    return client_class(channel)


class GcsClient:
    """Async client of the GCS at ``address`` (``host:port``), authenticated by ``token``.

    Parameters
    ----------
    address
        The GCS address, as written to the session directory's ``address`` file.
    token
        The cluster token (``runtime._session.read_token(token_file)``).
    timeout
        Deadline in seconds for each unary call (``Settings.rpc_timeout_s``); None waits
        forever.
    function_cache_size
        Most exported functions kept after their first fetch (``Settings.function_cache_size``).
        Exported functions are immutable, so cached rows never go stale; the bound caps memory.
    retry
        How long and how often a call tries to reach a GCS that went away (default: from
        ``Settings``: ``gcs_outage_timeout_s``, ``gcs_retry_s``, ``gcs_retry_max_s``).
    wait_for_first_contact
        Wait (as through an outage) for a GCS never reached yet, instead of failing at once.
    on_new_cluster
        Called once when the GCS turns out to be another cluster (see above).
    notify
        Called with a line for people once per outage when a call starts waiting for the
        GCS, and with another when the GCS is back (a driver prints them).
    clock
        The monotonic clock of the outage bookkeeping (tests pass a fake).

    Examples
    --------
    >>> async def main():                                   # doctest: +SKIP
    ...     gcs = GcsClient("127.0.0.1:6380", read_token(session / "token"))
    ...     print(await gcs.ping())
    ...     await gcs.close()
    """

    def __init__(self, address: str, token: str, timeout: float | None = _DEFAULTS.rpc_timeout_s, *,
                 function_cache_size: int = _DEFAULTS.function_cache_size,
                 retry: RetryPolicy | None = None, wait_for_first_contact: bool = False,
                 on_new_cluster: NewClusterHook | None = None,
                 notify: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if function_cache_size < 1:
            raise ValueError(f"function_cache_size must be >= 1, got {function_cache_size}")
        #: The state of the connection (``runtime.gcs.reconnect.Link``): ``connections``,
        #: ``new_cluster``, ``outage``, ``identity.cluster_id``, ``storage``.
        self.link = Link(address, retry or _policy(_DEFAULTS), wait_first=wait_for_first_contact,
                         notify=notify, clock=clock)
        self._on_new_cluster = on_new_cluster
        self.address = address
        self._metadata = token_metadata(token)
        self._timeout = timeout
        self._function_cache_size = function_cache_size
        self._channel = _channel(address, self.link.policy)
        self._nodes = _rpc_client(gcs_pb2_grpc.NodeInfoStub, self._channel)
        self._jobs = _rpc_client(gcs_pb2_grpc.JobsStub, self._channel)
        self._functions = _rpc_client(gcs_pb2_grpc.FunctionsStub, self._channel)
        self._tables = _rpc_client(gcs_pb2_grpc.TablesStub, self._channel)
        self._actors = _rpc_client(gcs_pb2_grpc.ActorsStub, self._channel)
        self._schedulers = _rpc_client(gcs_pb2_grpc.SchedulersStub, self._channel)
        self._groups = _rpc_client(gcs_pb2_grpc.PlacementGroupsStub, self._channel)
        self._admin = _rpc_client(gcs_pb2_grpc.AdminStub, self._channel)
        self._function_cache: OrderedDict[bytes, gcs_pb2.FunctionRow] = OrderedDict()
        self._closed = False

    @classmethod
    def from_settings(cls, address: str, token: str, settings: Settings, **options: Any) -> GcsClient:
        """A client whose call deadline, function cache and outage waits follow ``settings``;
        ``options`` are the other keywords of the constructor."""
        return cls(address, token, timeout=settings.rpc_timeout_s,
                   function_cache_size=settings.function_cache_size, retry=_policy(settings), **options)

    # ---- nodes and jobs ----

    async def register_node(self, row: gcs_pb2.NodeRow) -> int:
        """Register a node; return the GCS's number of shards.

        Raises ``NodeDiedError`` under the id of a node the GCS declared dead: such a node
        must rejoin under a new id (``runtime.gcs.fencing``).
        """
        req = gcs_pb2.RegisterNodeRequest(node=row)
        reply: gcs_pb2.RegisterNodeReply = await self._call(
            lambda: self._nodes.RegisterNode(req, **self._kw()))
        return reply.num_shards

    async def heartbeat(self, node_id: bytes, load: common_pb2.NodeLoad) -> bool:
        """Report a node's load; False means the GCS does not know the node (it lost its
        tables): register it again.

        Raises ``NodeDiedError`` when the GCS declared the node dead: it is fenced, and must
        rejoin under a new id with nothing running (``runtime.gcs.fencing``).
        """
        req = gcs_pb2.HeartbeatRequest(node_id=node_id, load=load)
        reply: gcs_pb2.HeartbeatReply = await self._call(lambda: self._nodes.Heartbeat(req, **self._kw()))
        return reply.known

    async def unregister_node(self, node_id: bytes, cause: str = "") -> None:
        """Mark a node dead with ``cause`` (e.g. "drained")."""
        req = gcs_pb2.UnregisterNodeRequest(node_id=node_id, cause=cause)
        await self._call(lambda: self._nodes.UnregisterNode(req, **self._kw()))

    async def register_job(self, row: gcs_pb2.JobRow) -> bytes:
        """Register a driver as a job; return its 4-byte job id."""
        req = gcs_pb2.RegisterJobRequest(job=row)
        reply: gcs_pb2.RegisterJobReply = await self._call(
            lambda: self._jobs.RegisterJob(req, **self._kw()), resend=False)
        return reply.job_id

    async def finish_job(self, job_id: bytes) -> None:
        """Mark a job finished. Raises ``LookupError`` when the GCS does not know it."""
        await self._call(lambda: self._jobs.FinishJob(gcs_pb2.FinishJobRequest(job_id=job_id), **self._kw()))

    # ---- functions ----

    async def export_function(self, row: gcs_pb2.FunctionRow) -> bool:
        """Export a function under its content hash; True when it was already there."""
        req = gcs_pb2.ExportFunctionRequest(function=row)
        reply: gcs_pb2.ExportFunctionReply = await self._call(
            lambda: self._functions.ExportFunction(req, **self._kw()))
        self._remember(row)
        return reply.existed

    async def get_function(self, function_id: bytes) -> gcs_pb2.FunctionRow | None:
        """The exported function with this id (cached after the first fetch), or None."""
        row = self._function_cache.get(function_id)
        if row is not None:
            self._function_cache.move_to_end(function_id)
            return row
        req = gcs_pb2.GetFunctionRequest(function_id=function_id)
        reply: gcs_pb2.GetFunctionReply = await self._call(
            lambda: self._functions.GetFunction(req, **self._kw()))
        if not reply.found:
            return None
        self._remember(reply.function)
        return reply.function

    # ---- tables ----

    async def report_events(self, task_events: Iterable[common_pb2.TaskEvent] = (),
                            object_updates: Iterable[gcs_pb2.ObjectLocationUpdate] = ()) -> None:
        """Send a batch of task events and object location updates."""
        req = gcs_pb2.ReportEventsRequest(task_events=task_events, objects=object_updates)
        await self._call(lambda: self._tables.ReportEvents(req, **self._kw()))

    async def get_entry(self, table: str, key: bytes) -> bytes | None:
        """The serialized row under ``key`` in ``table``, or None."""
        req = gcs_pb2.GetEntryRequest(table=table, key=key)
        reply: gcs_pb2.GetEntryReply = await self._call(lambda: self._tables.GetEntry(req, **self._kw()))
        return reply.value if reply.found else None

    async def list_table(self, table: str, limit: int = 0) -> list[tuple[bytes, bytes]]:
        """``(key, serialized row)`` pairs of ``table``; ``limit`` > 0 caps how many."""
        req = gcs_pb2.ListTableRequest(table=table, limit=limit)
        reply: gcs_pb2.ListTableReply = await self._call(lambda: self._tables.ListTable(req, **self._kw()))
        return [(e.key, e.value) for e in reply.entries]

    async def put(self, table: str, key: bytes, value: bytes,
                  only_if_absent: bool = False) -> tuple[bool, bytes]:
        """Write a generic row (``actors``/``kv``); return ``(written, previous value or b"")``."""
        req = gcs_pb2.PutRequest(table=table, key=key, value=value, only_if_absent=only_if_absent)
        reply: gcs_pb2.PutReply = await self._call(lambda: self._tables.Put(req, **self._kw()))
        if only_if_absent and not reply.written and reply.existing == value:
            return True, b""  # ours: an earlier try got through before the GCS went away
        return reply.written, reply.existing

    # ---- actors, actor names, scheduler replicas ----

    async def put_actor(self, row: gcs_pb2.ActorRow) -> None:
        """Write an actor's row (keyed by ``row.actor_id``) to the ``actors`` table."""
        await self._call(lambda: self._actors.PutActor(gcs_pb2.PutActorRequest(actor=row), **self._kw()))

    async def get_actor(self, actor_id: bytes) -> gcs_pb2.ActorRow | None:
        """The actor's row, or None when the GCS has none (yet)."""
        req = gcs_pb2.GetActorRequest(actor_id=actor_id)
        reply: gcs_pb2.GetActorReply = await self._call(lambda: self._actors.GetActor(req, **self._kw()))
        return reply.actor if reply.found else None

    async def claim_actor_name(self, namespace: str, name: str, value: bytes) -> tuple[bool, bytes]:
        """Register ``value`` under the actor name unless taken: ``(claimed, holder's value)``.

        ``value`` is what ``get_actor(name)`` needs to build a handle; it must not be empty.
        """
        req = gcs_pb2.ClaimActorNameRequest(namespace=namespace, name=name, value=value)
        reply: gcs_pb2.ClaimActorNameReply = await self._call(
            lambda: self._actors.ClaimActorName(req, **self._kw()))
        if not reply.claimed and reply.existing == value:
            return True, b""  # ours: an earlier try got through before the GCS went away
        return reply.claimed, reply.existing

    async def lookup_actor_name(self, namespace: str, name: str) -> bytes | None:
        """The value registered under the actor name, or None when it is free."""
        req = gcs_pb2.LookupActorNameRequest(namespace=namespace, name=name)
        reply: gcs_pb2.LookupActorNameReply = await self._call(
            lambda: self._actors.LookupActorName(req, **self._kw()))
        return reply.value if reply.found else None

    async def release_actor_name(self, namespace: str, name: str) -> None:
        """Free the actor name (nothing happens when it is free already)."""
        req = gcs_pb2.ReleaseActorNameRequest(namespace=namespace, name=name)
        await self._call(lambda: self._actors.ReleaseActorName(req, **self._kw()))

    async def register_scheduler(self, name: str, address: str) -> None:
        """Register (or move) the global-scheduler replica ``name`` at ``address`` (``host:port``)."""
        req = gcs_pb2.RegisterSchedulerRequest(name=name, address=address)
        await self._call(lambda: self._schedulers.RegisterScheduler(req, **self._kw()))

    async def deregister_scheduler(self, name: str) -> None:
        """Remove the global-scheduler replica ``name`` (nothing happens when it is unknown)."""
        req = gcs_pb2.DeregisterSchedulerRequest(name=name)
        await self._call(lambda: self._schedulers.DeregisterScheduler(req, **self._kw()))

    async def list_schedulers(self) -> list[str]:
        """Addresses (``host:port``) of the registered global-scheduler replicas, sorted."""
        reply: gcs_pb2.ListSchedulersReply = await self._call(
            lambda: self._schedulers.ListSchedulers(gcs_pb2.ListSchedulersRequest(), **self._kw()))
        return list(reply.addresses)

    # ---- placement groups ----

    async def create_placement_group(self, row: gcs_pb2.PlacementGroupRow) -> bytes:
        """Record a group (PENDING) that the GCS then places; return its id.

        Raises ``InvalidRequestError`` (a ``ValueError``) for a bad group or a name in use.
        """
        req = gcs_pb2.CreatePlacementGroupRequest(group=row)
        reply: gcs_pb2.CreatePlacementGroupReply = await self._call(
            lambda: self._groups.CreatePlacementGroup(req, **self._kw()), resend=False)
        return reply.placement_group_id

    async def remove_placement_group(self, pg_id: bytes) -> bool:
        """Release the group's bundles everywhere (its row stays, REMOVED); False when unknown."""
        req = gcs_pb2.RemovePlacementGroupRequest(placement_group_id=pg_id)
        reply: gcs_pb2.RemovePlacementGroupReply = await self._call(
            lambda: self._groups.RemovePlacementGroup(req, **self._kw()))
        return reply.found

    async def wait_placement_group(self, pg_id: bytes,
                                   timeout_s: float) -> tuple[bool, gcs_pb2.PlacementGroupRow]:
        """``(created, row)`` once the group is CREATED (or REMOVED), or after ``timeout_s``.

        The call's own deadline is ``timeout_s`` plus this client's; ``NotFoundError`` (a
        ``LookupError``) when the group is unknown.
        """
        req = gcs_pb2.WaitPlacementGroupRequest(placement_group_id=pg_id, timeout_s=timeout_s)
        kw = {"metadata": self._metadata,
              "timeout": None if self._timeout is None else self._timeout + timeout_s}
        reply: gcs_pb2.WaitPlacementGroupReply = await self._call(
            lambda: self._groups.WaitPlacementGroup(req, **kw))
        return reply.ready, reply.group

    async def get_placement_group(self, pg_id: bytes = b"", *, name: str = "",
                                  namespace: str = "") -> gcs_pb2.PlacementGroupRow | None:
        """The group with this id, or the live one named ``name`` in ``namespace``; None if none."""
        req = gcs_pb2.GetPlacementGroupRequest(placement_group_id=pg_id, name=name, namespace=namespace)
        reply: gcs_pb2.GetPlacementGroupReply = await self._call(
            lambda: self._groups.GetPlacementGroup(req, **self._kw()))
        return reply.group if reply.found else None

    async def subscribe(self, tables: Iterable[str]) -> AsyncGenerator[gcs_pb2.PubMessage, None]:
        """Every row of ``tables`` (``snapshot``), one ``snapshot_done`` message, then changes.

        Ends with ``ConnectionLostError`` when the GCS goes away or disconnects this
        subscriber for falling behind; subscribe again to get a fresh snapshot (during an
        outage, the next subscription waits for the GCS to come back, as every call does).
        Call ``aclose()`` on the returned generator (or break out of ``async for``) to leave.
        """
        self._check_open()
        await self._call(_nothing)  # a GCS that answers, and is still this client's cluster
        call = self._tables.Subscribe(gcs_pb2.SubscribeRequest(tables=list(tables)), metadata=self._metadata)
        try:
            async for msg in call:
                yield msg
        except grpc.aio.AioRpcError as err:
            failure = self._translate(err)
            if err.code() in _AWAY and not self._closed:
                self.link.lost(_cause(err))
            raise failure from err
        finally:
            call.cancel()

    # ---- admin ----

    async def ping(self) -> gcs_pb2.PingReply:
        """The GCS's session directory, pid, number of shards, cluster id and storage.

        Raises the ``new_cluster`` error when the GCS is another cluster than the one this
        client first reached.
        """
        reply: gcs_pb2.PingReply = await self._call(lambda: self._ping_once(), verify=False)
        return reply

    async def shutdown(self) -> None:
        """Ask the head process to stop (it replies first, then exits). Not tried again:
        a GCS that goes away meanwhile did what was asked."""
        await self._call(lambda: self._admin.Shutdown(gcs_pb2.AdminShutdownRequest(), **self._kw()),
                         resend=False)

    async def close(self) -> None:
        """Close the channel; later calls raise ``ClientClosedError``. Idempotent."""
        if not self._closed:
            self._closed = True
            await self._channel.close(None)

    async def __aenter__(self) -> GcsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<GcsClient {self.address}{' closed' if self._closed else ''}>"

    # ---- internals ----

    def _kw(self) -> dict[str, object]:
        self._check_open()
        return {"metadata": self._metadata, "timeout": self._timeout}

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError(f"this GcsClient for {self.address} was closed; create a new one")
        if self.link.new_cluster is not None:
            raise copy.copy(self.link.new_cluster)  # a fresh instance: one raised twice chains tracebacks

    def _remember(self, row: gcs_pb2.FunctionRow) -> None:
        self._function_cache[row.function_id] = row
        self._function_cache.move_to_end(row.function_id)
        while len(self._function_cache) > self._function_cache_size:
            self._function_cache.popitem(last=False)

    async def _call(self, make: Callable[[], Awaitable[_T]], *, resend: bool = True,
                    verify: bool = True) -> _T:
        """Make the call ``make()`` starts; while the GCS is away, wait and make it again.

        ``resend=False``: only when its request cannot have reached the GCS (the channel
        was not connected when it was sent). ``verify=False``: no ping first (``ping``).
        """
        link, backoff = self.link, None
        while True:
            self._check_open()
            sent = False
            try:
                if verify and not (link.verified and self._ready()):
                    await self._ping_once()
                    # It answered: a failure after this is a new outage, with a deadline of
                    # its own (not one running since a failure before the GCS came back).
                    backoff = None
                sent = self._ready()
                return await make()
            except grpc.aio.AioRpcError as err:
                failure = self._translate(err)
                if err.code() not in _AWAY or self._closed:
                    raise failure from err
                cause = _cause(err)
                link.lost(cause)
                if not link.may_retry(sent, resend):
                    raise failure from err
                backoff = backoff or link.backoff()
                delay = backoff.next_delay()
                if delay is None:
                    raise link.gave_up(backoff, cause) from err
                link.waiting()
                await asyncio.sleep(delay)

    def _ready(self) -> bool:
        return self._channel.get_state() == grpc.ChannelConnectivity.READY

    async def _ping_once(self) -> gcs_pb2.PingReply:
        """One ``Ping``: learn (or check) which cluster answers. Raises the gRPC error, or
        the ``new_cluster`` error (``on_new_cluster`` hears of it first)."""
        reply: gcs_pb2.PingReply = await self._admin.Ping(gcs_pb2.PingRequest(), **self._kw())
        first = self.link.new_cluster is None
        refused = self.link.answered(reply.cluster_id, reply.storage, reply.session_dir)
        if refused is not None:
            if first and self._on_new_cluster is not None:
                self._on_new_cluster(refused)
            elif first:
                logger.error("%s", refused)
            raise copy.copy(refused)
        return reply

    def _translate(self, err: grpc.aio.AioRpcError) -> ClusterError:
        return errors.translate(err, "GCS", self.address, closed=self._closed)


def _channel(address: str, policy: RetryPolicy) -> grpc.aio.Channel:
    """The channel to the GCS: ``runtime.rpc.channel.connect``'s (so with TLS when the
    process's transport has it), but whose reconnection backoff stays under the client's
    own (gRPC's grows to 120 s: calls made after a long outage would fail at once, for
    minutes, although the GCS is back)."""
    backoff_ms = [("grpc.initial_reconnect_backoff_ms", max(int(policy.first_s * 1000), 10)),
                  ("grpc.max_reconnect_backoff_ms", max(int(policy.max_s * 1000), 10))]
    return connect(address, options=backoff_ms)


def _cause(err: grpc.aio.AioRpcError) -> str:
    """What a call that found the GCS away got, in short (for the outage's log line)."""
    return f"{err.code().name}: {err.details() or 'no details'}"


def _policy(settings: Settings) -> RetryPolicy:
    """The outage waits of ``settings``."""
    return RetryPolicy(timeout_s=settings.gcs_outage_timeout_s, first_s=settings.gcs_retry_s,
                       max_s=settings.gcs_retry_max_s)
