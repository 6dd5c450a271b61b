"""``get_runtime_context()``: where the calling code runs, as Ray's ``RuntimeContext``."""

from __future__ import annotations

import json
import pathlib
from typing import TYPE_CHECKING

from runtime.api import _context
from runtime.api._actor import ActorHandle, _methods_of

if TYPE_CHECKING:
    from runtime.api._client import CoreClient
    from runtime.protocol import common_pb2


class RuntimeContext:
    """Where the calling code runs: job, node, worker, task, actor (``get_runtime_context()``).

    Ids are hex strings. In a driver there is no task or actor (None).

    Examples
    --------
    >>> import runtime as rt
    >>> @rt.remote
    ... def where():
    ...     ctx = rt.get_runtime_context()
    ...     return ctx.get_node_id(), ctx.get_task_id(), ctx.get_assigned_resources()
    >>> rt.get(where.remote())                                   # doctest: +SKIP
    ('9f3c…', '5be1…', {'CPU': 1.0})
    """

    def __init__(self, client: CoreClient) -> None:
        self._client = client

    def _task(self) -> common_pb2.TaskSpec | None:
        stack = self._client.task_stack
        return stack[-1] if stack else None

    def get_job_id(self) -> str:
        """Hex id of the job (driver) the current task belongs to."""
        task = self._task()
        return (task.job_id if task is not None else self._client.job_id).hex()

    def get_task_id(self) -> str | None:
        """Hex id of the running task (an actor's call, or its constructor); None in a driver."""
        task = self._task()
        return task.task_id.hex() if task is not None else None

    def get_actor_id(self) -> str | None:
        """Hex id of the actor whose method (or constructor) runs here; None elsewhere."""
        task = self._task()
        return task.actor_id.hex() if task is not None and task.actor_id else None

    def get_node_id(self) -> str:
        """Hex id of the node this process is on."""
        return self._client.node_id.hex()

    def get_worker_id(self) -> str:
        """Hex id of this process (a worker's id; a driver's client id)."""
        return (self._client.host.worker_id or self._client.client_id).hex()

    @property
    def namespace(self) -> str:
        """The namespace of this job: named actors are looked up in it by default."""
        return _context.namespace_of(self._client)

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the running task or actor holds (``{"CPU": 1.0, "GPU": 1.0}``);
        ``{}`` in a driver."""
        task = self._task()
        return dict(task.resources) if task is not None else {}

    def get_placement_group_id(self) -> str | None:
        """Hex id of the placement group the running task or actor is in; None when none."""
        task = self._task()
        if task is None or not task.strategy.placement_group_id:
            return None
        return task.strategy.placement_group_id.hex()

    def is_canceled(self) -> bool:
        """True when the running task was asked to cancel (``rt.cancel``): a task that
        catches the interrupt, or an actor's call, can check it and stop."""
        task = self._task()
        return task is not None and self._client.host.is_cancelled(task.task_id)

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """True in an actor that was restarted after its process died (``max_restarts``);
        a property, as in Ray."""
        return self._client.host.actor_restarts() > 0

    @property
    def current_actor(self) -> ActorHandle:
        """A handle to the actor whose method (or constructor) runs here, as in Ray: pass it
        to tasks, or call its methods from its own threads. Raises ``RuntimeError`` outside
        an actor. It does not keep the actor alive by itself (the handles its creator gave
        out do)."""
        found = self._client.host.current_actor()
        if found is None:
            raise RuntimeError("current_actor is only available inside an actor (its constructor "
                               "or its methods); this code runs in a driver or a task.")
        spec, cls = found
        options = json.loads(spec.actor_options or b"{}")
        return ActorHandle(spec.actor_id, cls.__name__, _methods_of(cls), options.get("name"),
                           options.get("namespace") or spec.namespace, spec.function_id)

    @property
    def session_dir(self) -> pathlib.Path:
        """The session directory of the cluster (logs, sockets)."""
        return pathlib.Path(self._client.session_dir)


def get_runtime_context() -> RuntimeContext:
    """Facts about where the caller runs: ``get_job_id()``, ``get_task_id()``,
    ``get_actor_id()``, ``get_node_id()``, ``get_assigned_resources()``, ``is_canceled()``..."""
    return RuntimeContext(_context.connected())
