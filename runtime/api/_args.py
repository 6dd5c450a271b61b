"""Encoding a call's arguments into a task spec, and decoding them in the worker.

The spec's ``args`` blob holds ``(args, kwargs, slots)``: positional and keyword values,
with every top-level ObjectRef replaced by None and listed in ``slots`` (an int for a
position, a str for a keyword). ``arg_refs`` lists those refs' ids in the same order: the
node waits for them and hands their values to the worker, which puts them in place. Refs
nested inside values stay refs. Values bigger than the inline threshold are put in the
object store first and passed as refs, so large arrays are not copied into messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from runtime import _ids
from runtime.api import _context
from runtime.api._object_ref import ObjectRef
from runtime.protocol import codec, common_pb2, node_pb2

if TYPE_CHECKING:
    from runtime.api._client import CoreClient


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unpicklable(name: str, where: str, value: Any, err: BaseException) -> TypeError:
    return TypeError(
        f"{name}.remote(): {where} ({type(value).__name__}: {_describe(value)}) cannot be "
        f"pickled: {err}. Nothing was submitted. Pass a picklable value, or create the "
        "object inside the task.")


def encode(client: CoreClient, spec: common_pb2.TaskSpec, name: str,
           args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[ObjectRef]:
    """Fill ``spec.args``, ``arg_refs`` and ``nested_refs``; return refs to keep alive until sent."""
    a = list(args)
    kw = dict(kwargs)
    slots: list[int | str] = []
    refs: list[ObjectRef] = []
    for i, v in enumerate(a):
        if type(v) is ObjectRef:
            slots.append(i)
            refs.append(v)
            a[i] = None
    for k, v in kw.items():
        if type(v) is ObjectRef:
            slots.append(k)
            refs.append(v)
            kw[k] = None
    try:
        s = codec.serialize((a, kw, slots))
    except Exception as e:
        raise _find_culprit(name, a, kw, e) from e
    if s.nbytes > client.inline_threshold:
        # Put each large value in the store and pass it by reference.
        items: list[tuple[int | str, Any]] = [*enumerate(a), *kw.items()]
        for where, v in items:
            if v is None or where in slots:
                continue
            sv = codec.serialize(v)
            if sv.nbytes > client.inline_threshold // 4:
                oid = _ids.object_id(_ids.new_id(), 0)
                ref = ObjectRef(oid)
                client.put_serialized(oid, sv)
                if isinstance(where, int):
                    a[where] = None
                else:
                    kw[where] = None
                slots.append(where)
                refs.append(ref)
        s = codec.serialize((a, kw, slots))
    spec.args = s.to_bytes()
    spec.arg_refs.extend([r._id for r in refs])
    if s.contained_refs:
        spec.nested_refs.extend(s.contained_refs)
    return refs


def _find_culprit(name: str, a: list[Any], kw: dict[str, Any], err: BaseException) -> TypeError:
    for i, v in enumerate(a):
        try:
            codec.serialize(v)
        except Exception as e:  # noqa: BLE001 - any pickling failure names this argument
            return _unpicklable(name, f"argument {i}", v, e)
    for k, v in kw.items():
        try:
            codec.serialize(v)
        except Exception as e:  # noqa: BLE001 - any pickling failure names this argument
            return _unpicklable(name, f"keyword argument {k!r}", v, e)
    return TypeError(f"{name}.remote(): the arguments cannot be pickled: {err}. Nothing was submitted.")


def decode(blob: bytes, values: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """The worker side: rebuild ``(args, kwargs)`` with ref values in place."""
    # The layout ``encode`` wrote: (args, kwargs, slots), one value per slot.
    a, kw, slots = cast("tuple[list[Any], dict[str, Any], list[int | str]]", codec.deserialize(blob))
    for slot, value in zip(slots, values, strict=False):
        if isinstance(slot, int):
            a[slot] = value
        else:
            kw[slot] = value
    return a, kw


def submit(client: CoreClient, op: node_pb2.ClientOp, name: str, args: tuple[Any, ...],
           kwargs: dict[str, Any], strategy: Any = None) -> Any:
    """Finish ``op.submit`` (origin, arguments), send it, and return what ``.remote`` returns:
    one ObjectRef, a list of them (``num_returns > 1``), or None (``num_returns == 0``)."""
    spec = op.submit
    client.stamp(spec, strategy)
    if not spec.actor_id:  # an actor's calls run in its creator's job's namespace
        spec.namespace = _context.namespace_of(client)
    keep = encode(client, spec, name, args, kwargs)  # alive until the submit is queued
    n = spec.num_returns
    refs = [ObjectRef(_ids.object_id(spec.task_id, i)) for i in range(1, n + 1)]
    client.submit(op)
    del keep
    if client.submit_handlers and not spec.parent_task_id:  # submitted by the driver itself
        for handler in client.submit_handlers:
            handler(spec, refs)
    if n == 1:
        return refs[0]
    return refs if n else None
