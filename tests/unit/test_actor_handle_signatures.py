"""An actor handle carries its methods' signatures wherever it is sent, so every copy
refuses a call that does not fit at the call site (issue 12, point 8). No cluster: the
check runs before the call needs one."""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle
import pytest

from runtime.api._actor import ActorHandle, _methods_of, _signatures_of


class Shapes:
    def one(self, x: int) -> int:
        return x

    def optional(self, x: int = 1, *, key: str = "k") -> int:
        return x

    def star(self, a: int, /, *rest: Any, flag: bool, **more: Any) -> int:
        return a

    @staticmethod
    def static(x: int) -> int:
        return x

    @classmethod
    def klass(cls) -> str:
        return cls.__name__


def _handle() -> ActorHandle:
    methods = _methods_of(Shapes)
    return ActorHandle(b"\x01" * 16, "Shapes", methods, None, "ns", b"\x02" * 20, None,
                       _signatures_of(Shapes, methods))


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_a_sent_handle_refuses_calls_that_do_not_fit(dumps) -> None:
    h = pickle.loads(dumps(_handle()))
    assert isinstance(h, ActorHandle) and h == _handle()
    refused = {
        "one": (lambda: h.one.remote(1, 2, 3), "too many positional arguments"),
        "one ": (lambda: h.one.remote(), "missing a required argument: 'x'"),
        "optional": (lambda: h.optional.remote(1, 2), "too many positional arguments"),
        "optional ": (lambda: h.optional.remote(nope=1), "unexpected keyword argument 'nope'"),
        "star": (lambda: h.star.remote(1, 2), "missing a required argument: 'flag'"),
        "star ": (lambda: h.star.remote(a=1, flag=True), "positional"),
        "static": (lambda: h.static.remote(), "missing a required argument: 'x'"),
        "klass": (lambda: h.klass.remote(1), "too many positional arguments"),
    }
    for method, (call, why) in refused.items():
        where = rf"Shapes\.{method.strip()}\.remote\(\): .*Nothing was submitted"
        with pytest.raises(TypeError, match=where) as info:
            call()
        assert why in str(info.value), (method, str(info.value))


def test_calls_that_fit_pass_the_check() -> None:
    h = pickle.loads(pickle.dumps(_handle()))
    sigs = h._signatures  # what .remote() binds to (it would go on to the cluster next)
    assert sigs is not None and set(sigs) == {"one", "optional", "star", "static", "klass"}
    sigs["one"].bind(1)
    sigs["optional"].bind(key="v")
    sigs["optional"].bind()
    sigs["star"].bind(1, 2, 3, flag=True, x=4)
    sigs["static"].bind(x=2)
    sigs["klass"].bind()
