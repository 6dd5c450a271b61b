"""Malformed requests for every RPC method of the cluster: the fuzz test's generator.

``requests(method, rng)`` makes the bytes of one malformed request of ``method`` (a
``MethodDescriptor`` of our protocol): a message of the right type whose fields hold
values no honest client sends (wrong lengths of ids, negative and huge numbers, NaN,
strange strings, deep or empty nested messages), or that message truncated, or random
bytes, or an oversized one. Seeded: a failure names its seed and replays.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from google.protobuf import descriptor as _d
from google.protobuf import message_factory
from google.protobuf.message import Message

from runtime.protocol import common_pb2, gcs_pb2, node_pb2, scheduler_pb2

__all__ = ["SERVICES", "Fuzzed", "methods", "requests"]

#: Every service of our protocol, by file.
SERVICES = [s for f in (gcs_pb2, node_pb2, scheduler_pb2) for s in f.DESCRIPTOR.services_by_name.values()]

_INTS = [0, 1, -1, 2, 7, 255, 65536, 2**31 - 1, -(2**31), 2**53]
_FLOATS = [0.0, -1.0, 1e-9, 1e308, -1e308, math.nan, math.inf, -math.inf, 0.5]
_STRINGS = ["", "x", "../../etc/passwd", "a:b:c", "host:99999", "\x00\x01", "é" * 40, "CPU",
            "GPU", " ", "x" * 300, "%s%n", "sqlite:///tmp/x", "/.ca", "-1"]
_BYTES_LENGTHS = [0, 1, 15, 16, 17, 20, 64]


class Fuzzed:
    """One malformed request: its bytes and how it was made (for a failure's message)."""

    __slots__ = ("data", "how")

    def __init__(self, data: bytes, how: str) -> None:
        self.data = data
        self.how = how


def methods() -> list[tuple[str, _d.MethodDescriptor]]:
    """``("/cellray.Service/Method", descriptor)`` for every method of every service."""
    return [(f"/{s.full_name}/{m.name}", m) for s in SERVICES for m in s.methods]


def requests(method: _d.MethodDescriptor, rng: random.Random, n: int) -> Iterator[Fuzzed]:
    """``n`` malformed requests of ``method``'s input type."""
    cls = message_factory.GetMessageClass(method.input_type)
    for i in range(n):
        kind = i % 10
        if kind == 0:
            size = rng.choice([1, 3, 17, 200])
            yield Fuzzed(rng.randbytes(size), f"{size} random bytes")
            continue
        msg = cls()
        _fill(msg, rng, depth=0)
        data = msg.SerializeToString()
        if kind == 1 and len(data) > 1:
            cut = rng.randrange(1, len(data))
            yield Fuzzed(data[:cut], f"{method.input_type.name} cut at {cut} of {len(data)} bytes")
        elif kind == 2:
            big = _oversized(cls())
            yield Fuzzed(big, f"{method.input_type.name} of {len(big)} bytes")
        else:
            yield Fuzzed(data, f"{method.input_type.name} {_short(msg)}")


def _short(msg: Message) -> str:
    text = str(msg).replace("\n", " ")
    return text if len(text) <= 300 else text[:300] + "..."


def _oversized(msg: Message) -> bytes:
    """``msg`` with its first bytes or string field 5 MiB long (or 5 MiB of garbage)."""
    for field in msg.DESCRIPTOR.fields:
        if not field.is_repeated:
            if field.type == _d.FieldDescriptor.TYPE_BYTES:
                setattr(msg, field.name, b"\x07" * (5 << 20))
                return msg.SerializeToString()
            if field.type == _d.FieldDescriptor.TYPE_STRING:
                setattr(msg, field.name, "y" * (5 << 20))
                return msg.SerializeToString()
    return b"\x0a\x80\x80\x40" + b"z" * (5 << 20)  # field 1, length-delimited, 1 MiB declared


def _fill(msg: Message, rng: random.Random, depth: int) -> None:
    for field in msg.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                _fill_map(msg, field, rng, depth)
                continue
            target = getattr(msg, field.name)
            for _ in range(rng.randrange(0, 4)):
                if field.type == _d.FieldDescriptor.TYPE_MESSAGE:
                    if depth < 3:
                        _fill(target.add(), rng, depth + 1)
                else:
                    target.append(_scalar(field, rng))
            continue
        if field.type == _d.FieldDescriptor.TYPE_MESSAGE:
            if depth < 3:
                sub = getattr(msg, field.name)
                sub.SetInParent()
                _fill(sub, rng, depth + 1)
            continue
        try:
            setattr(msg, field.name, _scalar(field, rng))
        except (ValueError, TypeError):
            pass  # a value the field's type cannot hold (an out-of-range enum): leave it out


def _fill_map(msg: Message, field: Any, rng: random.Random, depth: int) -> None:
    target = getattr(msg, field.name)
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    for _ in range(rng.randrange(0, 4)):
        key = _scalar(key_field, rng)
        if value_field.type == _d.FieldDescriptor.TYPE_MESSAGE:
            if depth < 3:
                _fill(target[key], rng, depth + 1)
        else:
            target[key] = _scalar(value_field, rng)


def _scalar(field: Any, rng: random.Random) -> object:
    t = field.type
    if t in (_d.FieldDescriptor.TYPE_DOUBLE, _d.FieldDescriptor.TYPE_FLOAT):
        return rng.choice(_FLOATS)
    if t == _d.FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == _d.FieldDescriptor.TYPE_STRING:
        return rng.choice(_STRINGS)
    if t == _d.FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice(_BYTES_LENGTHS))
    if t == _d.FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values])
    value = rng.choice(_INTS)
    if t in (_d.FieldDescriptor.TYPE_UINT32, _d.FieldDescriptor.TYPE_UINT64,
             _d.FieldDescriptor.TYPE_FIXED32, _d.FieldDescriptor.TYPE_FIXED64):
        value = abs(value)
    if t in (_d.FieldDescriptor.TYPE_INT32, _d.FieldDescriptor.TYPE_SINT32,
             _d.FieldDescriptor.TYPE_SFIXED32, _d.FieldDescriptor.TYPE_UINT32,
             _d.FieldDescriptor.TYPE_FIXED32):
        value = max(min(value, 2**31 - 1 if t not in (_d.FieldDescriptor.TYPE_UINT32,
                                                        _d.FieldDescriptor.TYPE_FIXED32) else 2**32 - 1),
                    -(2**31))
    return value


# ``common_pb2`` is imported so that the message classes of every file are registered.
_ = common_pb2
