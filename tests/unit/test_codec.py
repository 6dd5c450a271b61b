"""The codec: round trips, zero-copy buffers, the error flag, contained refs, bad data."""

from __future__ import annotations

import hashlib
import math
import mmap
import pickle
import struct
import threading

import numpy as np
import pytest

from runtime.exceptions import TaskError
from runtime.protocol import codec
from runtime.protocol.codec import (
    ALIGNMENT,
    Serialized,
    deserialize,
    is_error,
    record_ref,
    serialize,
    serialize_function,
)


def roundtrip(value: object) -> object:
    return deserialize(serialize(value).to_bytes())


class FakeRef:
    """Stands in for ObjectRef: records its id while being pickled, like the real one."""

    def __init__(self, object_id: bytes) -> None:
        self.object_id = object_id

    def __reduce__(self) -> tuple[type[FakeRef], tuple[bytes]]:
        record_ref(self.object_id)
        return (FakeRef, (self.object_id,))


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**100, -(2**70), 1.5, -0.0, math.inf, "", "é" * 100,
    "x" * 100, b"", b"\x00\xff" * 50, [], (), {}, [1, "a", None, 2.5, b"b"], (1, (2, (3,))),
    {"a": 1, "b": [1, 2, {"c": (3,)}]}, {1: "x", (2, 3): None}, {1, 2, 3}, frozenset("ab"),
    1 + 2j, bytearray(b"abc"), range(10), list(range(10_000)), [[1, 2], [3]],
], ids=repr)
def test_roundtrip_builtin_values(value: object) -> None:
    assert roundtrip(value) == value


def test_roundtrip_nan_keeps_type() -> None:
    out = roundtrip(math.nan)
    assert isinstance(out, float) and math.isnan(out)


def test_roundtrip_lambda_and_closure() -> None:
    k = 7
    fn = roundtrip(lambda x: x * k)
    assert fn(6) == 42  # type: ignore[operator]


def test_roundtrip_class_defined_in_test_is_pickled_by_value() -> None:
    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

        def norm2(self) -> int:
            return self.x * self.x + self.y * self.y

    payload = serialize(Point(3, 4)).to_bytes()
    out = deserialize(payload)
    assert out.norm2() == 25  # type: ignore[attr-defined]
    assert type(out).__name__ == "Point"
    cls = roundtrip(Point)
    assert cls(1, 2).norm2() == 5  # type: ignore[operator]


@pytest.mark.parametrize("array", [
    np.arange(1000, dtype=np.float64),
    np.arange(24, dtype=np.int8).reshape(2, 3, 4),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.arange(20)[::3],  # not contiguous: numpy pickles it in band
    np.array(5.0),
    np.zeros((0, 3)),
    np.array([True, False]),
    np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    np.array(["a", {"b": 1}, None], dtype=object),
], ids=lambda a: f"{a.dtype}-{a.shape}")
def test_roundtrip_numpy_arrays(array: np.ndarray) -> None:
    out = roundtrip(array)
    assert isinstance(out, np.ndarray)
    assert out.dtype == array.dtype and out.shape == array.shape
    assert (out == array).all()


def test_numpy_buffers_go_out_of_band_and_aligned() -> None:
    arrays = [np.arange(100, dtype=np.int64), np.ones(7, dtype=np.uint8), np.arange(3.0)]
    s = serialize({"arrays": arrays})
    data = s.to_bytes()
    _, _, _, nbuf, plen = struct.unpack_from("<3sBB3xIQ", data)
    assert nbuf == 3
    assert plen < 1000  # the array data is not in the pickle stream
    offsets = [struct.unpack_from("<QQ", data, 20 + 16 * i) for i in range(nbuf)]
    assert all(offset % ALIGNMENT == 0 for offset, _ in offsets)
    assert [length for _, length in offsets] == [a.nbytes for a in arrays]


def test_numpy_zero_copy_from_read_only_mapping() -> None:
    array = np.random.default_rng(0).random(1 << 18)
    s = serialize(array)
    region = mmap.mmap(-1, s.nbytes)  # anonymous, page aligned
    s.write_into(memoryview(region))
    region.flush()
    readonly = mmap.mmap(-1, s.nbytes)
    readonly.write(region[:])
    ro_view = memoryview(readonly).toreadonly()

    out = deserialize(ro_view)
    assert isinstance(out, np.ndarray)
    assert np.array_equal(out, array)
    assert not out.flags.writeable
    assert np.shares_memory(out, np.frombuffer(ro_view, dtype=np.uint8))
    assert out.ctypes.data % ALIGNMENT == 0


def test_numpy_zero_copy_from_writable_buffer_is_a_view() -> None:
    array = np.arange(10_000, dtype=np.int32)
    s = serialize(array)
    buf = bytearray(s.nbytes)
    s.write_into(memoryview(buf))
    out = deserialize(buf)
    assert isinstance(out, np.ndarray)
    assert out.flags.writeable
    assert np.shares_memory(out, np.frombuffer(buf, dtype=np.uint8))


def test_deserialize_from_bytes_gives_read_only_array() -> None:
    out = roundtrip(np.arange(1000))
    assert isinstance(out, np.ndarray) and not out.flags.writeable


def test_serialize_does_not_copy_the_array() -> None:
    array = np.zeros(1 << 20, dtype=np.uint8)
    s = serialize(array)
    array[0] = 9  # visible in the layout: serialize only holds a view until written
    assert deserialize(s.to_bytes())[0] == 9  # type: ignore[index]


def test_write_into_parts_and_to_bytes_agree() -> None:
    for value in [12, {"a": [1, 2]}, [np.arange(5), np.arange(70, dtype=np.uint8)]]:
        s = serialize(value)
        buf = bytearray(b"\xee" * s.nbytes)  # garbage: padding must be written too
        s.write_into(memoryview(buf))
        assert bytes(buf) == s.to_bytes() == b"".join(bytes(p) for p in s.parts())
        assert len(buf) == s.nbytes


def test_write_into_rejects_wrong_size() -> None:
    s = serialize(np.arange(10))
    with pytest.raises(ValueError, match=f"exactly {s.nbytes} bytes"):
        s.write_into(memoryview(bytearray(s.nbytes + 1)))


def test_error_flag() -> None:
    s = serialize(KeyError("missing"), error=True)
    assert s.is_error
    data = s.to_bytes()
    assert is_error(data)
    out = deserialize(data)
    assert isinstance(out, KeyError) and out.args == ("missing",)
    plain = serialize(KeyError("a value, not an error"))
    assert not plain.is_error and not is_error(plain.to_bytes())
    assert not is_error(serialize(1).to_bytes())


def test_unpicklable_exception_falls_back_to_runtime_error() -> None:
    class LockedError(Exception):
        pass

    exc = LockedError("lost the lock")
    exc.lock = threading.Lock()  # type: ignore[attr-defined]
    s = serialize(exc, error=True)
    assert s.is_error
    out = deserialize(s.to_bytes())
    assert type(out) is RuntimeError
    message = str(out)
    assert "LockedError: lost the lock" in message
    assert "could not be pickled" in message and "lock" in message


def test_exception_that_pickles_but_cannot_load_falls_back() -> None:
    class TwoArgError(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"{a}/{b}")  # args has one item: loading calls __init__(msg)

    out = deserialize(serialize(TwoArgError(1, 2), error=True).to_bytes())
    assert type(out) is RuntimeError
    assert "TwoArgError: 1/2" in str(out)


def test_exception_with_broken_str_still_serializes() -> None:
    class Weird(Exception):
        lock = None

        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    exc = Weird()
    exc.lock = threading.Lock()  # type: ignore[assignment]
    out = deserialize(serialize(exc, error=True).to_bytes())
    assert type(out) is RuntimeError and "Weird" in str(out)


def test_task_error_with_unpicklable_cause_keeps_its_details() -> None:
    cause = ValueError("bad input")
    cause.lock = threading.Lock()  # type: ignore[attr-defined]
    err = TaskError("", function_name="f", task_id="ab" * 8, node_id="n-1", pid=42,
                    remote_traceback="Traceback ...\nValueError: bad input", cause=cause)
    out = deserialize(serialize(err, error=True).to_bytes())
    assert type(out) is TaskError
    assert out.cause is None and out.cause_type_name == "ValueError"
    assert out.function_name == "f" and out.pid == 42
    assert "ValueError: bad input" in str(out) and "could not be pickled" in str(out)


def test_unpicklable_value_raises() -> None:
    with pytest.raises(TypeError, match="lock"):
        serialize({"lock": threading.Lock()})


def test_contained_refs_are_recorded() -> None:
    a, b = b"a" * 20, b"b" * 20
    s = serialize([FakeRef(a), {"nested": (FakeRef(b),)}, 3])
    assert s.contained_refs == [a, b]
    out = deserialize(s.to_bytes())
    assert isinstance(out, list) and out[0].object_id == a
    assert serialize([1, 2]).contained_refs == []
    assert serialize(FakeRef(b)).contained_refs == [b]


def test_contained_refs_collector_is_reset_after_failure() -> None:
    with pytest.raises(TypeError):
        serialize([FakeRef(b"x" * 20), threading.Lock()])
    record_ref(b"y" * 20)  # outside serialize: ignored, not collected anywhere
    assert codec._contained.get() is None
    assert serialize([FakeRef(b"z" * 20)]).contained_refs == [b"z" * 20]


def test_error_contained_refs_recorded() -> None:
    exc = ValueError("with a ref")
    exc.ref = FakeRef(b"r" * 20)  # type: ignore[attr-defined]
    s = serialize(exc, error=True)
    assert s.is_error and s.contained_refs == [b"r" * 20]


@pytest.mark.parametrize("data, match", [
    (b"", "truncated"),
    (b"CRY\x01", "truncated"),
    (b"XYZ" + bytes(40), "not a cellray object: expected magic b'CRY'"),
    (b"CRY\x63" + bytes(40), "format version 99"),
])
def test_bad_data_raises_value_error(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        deserialize(data)
    with pytest.raises(ValueError, match=match):
        is_error(data)


def test_truncated_pickle_raises_value_error() -> None:
    data = serialize("x" * 1000).to_bytes()
    with pytest.raises(ValueError, match=r"truncated.*announces"):
        deserialize(data[:500])
    with pytest.raises(ValueError, match=r"truncated.*announces"):
        deserialize(memoryview(data)[:500])


def test_truncated_buffer_raises_value_error() -> None:
    data = serialize(np.arange(1000)).to_bytes()
    with pytest.raises(ValueError, match="buffer 0 spans"):
        deserialize(data[:-100])


def test_serialize_function_hashes_content() -> None:
    def add(x: int, y: int) -> int:
        return x + y

    data, digest = serialize_function(add)
    assert len(digest) == 20 and digest == hashlib.sha1(data).digest()
    assert pickle.loads(data)(2, 3) == 5
    assert serialize_function(add)[1] == digest
    assert serialize_function(lambda x: x)[1] != digest


def test_serialized_repr_and_type() -> None:
    s = serialize(np.arange(3), error=False)
    assert isinstance(s, Serialized)
    assert "1 buffers" in repr(s)


def test_shipped_functions_keep_their_file_and_cell_source_for_tracebacks() -> None:
    import linecache
    import traceback

    import cloudpickle

    from runtime.protocol.codec import serialize_function

    filename = "<ipython-input-7-cellray-test>"
    source = "def cell_fn(x):\n    y = x * 2\n    raise KeyError(y)\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, object] = {}
    exec(compile(source, filename, "exec"), namespace)
    data, _ = serialize_function(namespace["cell_fn"])
    del linecache.cache[filename]  # as on a worker, which never saw the cell
    fn = cloudpickle.loads(data)
    with pytest.raises(KeyError) as info:
        fn(21)
    text = "".join(traceback.format_exception(info.value))
    assert f'File "{filename}", line 3, in cell_fn' in text
    assert "raise KeyError(y)" in text
