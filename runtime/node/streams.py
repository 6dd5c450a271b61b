"""Streaming (generator) tasks: their items reach the owner as they are produced. Pure, a
part of the local scheduler.

A streaming task's items are its returns 1, 2, 3..., each sent by the worker while the task
runs (``TaskResult.stream_index``), then an end marker as the next return. Each item is
held for the task's owner as soon as it exists (the owner's ObjectRefGenerator takes the
reference over). A task that runs here for another node sends its items home as they come
(``ReportResults.stream_index``). A stream cut short (its worker died for good, it was
cancelled) ends with its error as the next item, then the end marker.
"""

from __future__ import annotations

from runtime import _ids
from runtime.node.clients import ClientTable
from runtime.node.objects import ObjectTable
from runtime.node.spill import Spilling
from runtime.node.tasks import Task, TaskHost
from runtime.protocol import common_pb2, node_pb2
from runtime.protocol.codec import STREAM_END
from runtime.protocol.states import TaskState


class Streams:
    """Items of streaming tasks, here and for their homes (see the module docstring)."""

    __slots__ = ("_clients", "_host", "_objects", "_spill")

    def __init__(self, host: TaskHost, clients: ClientTable, objects: ObjectTable,
                 spill: Spilling) -> None:
        self._host = host
        self._clients = clients
        self._objects = objects
        self._spill = spill

    def item(self, res: node_pb2.TaskResult) -> None:
        """The worker running a streaming task produced an item (or its end marker)."""
        task = self._host.task(res.task_id)
        if task is None or res.stream_index <= task.streamed:
            return  # over, or an item a retried run sent before already
        task.streamed = res.stream_index
        self._deliver(task, list(res.returns), res.stream_index)

    def end_with(self, task: Task, error: bytes) -> None:
        """``task`` ends before its stream did: ``error`` is its next item, then the end."""
        spec, n = task.spec, task.streamed
        for index, blob in ((n + 1, error), (n + 2, STREAM_END)):
            oid = _ids.object_id(spec.task_id, index)
            data = common_pb2.ObjectData(object_id=oid, inline=blob, size=len(blob))
            self._deliver(task, [data], index)
        task.streamed = n + 2

    def _deliver(self, task: Task, items: list[common_pb2.ObjectData], index: int) -> None:
        home = self._spill.forwarded.get(task.spec.task_id)
        if home is not None:
            self._spill.report_home(task, home, items, TaskState.FINISHED, "", stream_index=index)
            return
        owner, host, clients = task.spec.owner_id, self._host, self._clients
        for data in items:
            clients.hold(owner, (data.object_id,))
            host.store_object(data)
            if owner in clients:
                clients.send_object(owner, data.object_id)

    def item_home(self, req: node_pb2.ReportResultsRequest) -> None:
        """A node running our streaming task sent an item: held here for its owner."""
        owner, host, clients, objects = req.owner_id, self._host, self._clients, self._objects
        for data in req.returns:
            oid = data.object_id
            clients.hold(owner, (oid,))
            if data.inline:
                host.store_object(data)
                if owner in clients:
                    clients.send_object(owner, oid)
            elif not objects.known(oid):
                objects.add_remote(oid, data.node_id, data.size, list(data.nested_refs))
                if owner in clients:
                    host.ready_elsewhere(owner, oid, data.node_id, data.size)

