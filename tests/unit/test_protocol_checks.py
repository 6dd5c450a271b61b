"""Checks of specs and bundles that arrive from other processes (``runtime.protocol.checks``):
each names the field that is wrong; a spec our own API makes passes."""

from __future__ import annotations

import math

import pytest

from runtime.protocol import common_pb2
from runtime.protocol.checks import MAX_RETURNS, resources_problem, spec_problem


def _spec(**fields: object) -> common_pb2.TaskSpec:
    spec = common_pb2.TaskSpec(task_id=b"t" * 16, function_id=b"f" * 20, name="f", num_returns=1)
    for name, value in fields.items():
        setattr(spec, name, value)
    return spec


def test_a_spec_our_api_makes_passes() -> None:
    spec = _spec()
    spec.resources["CPU"] = 1.0
    assert spec_problem(spec) == ""
    call = _spec(actor_id=b"a" * 16, function_id=b"")  # an actor call names a method, not a function
    assert spec_problem(call) == ""


@pytest.mark.parametrize(("fields", "named"), [
    ({"task_id": b"short"}, "spec.task_id must be 16 bytes"),
    ({"function_id": b""}, "spec.function_id must be 1..64 bytes"),
    ({"parent_task_id": b"x" * 3}, "spec.parent_task_id must be 16 bytes or empty"),
    ({"num_returns": MAX_RETURNS + 1}, "spec.num_returns must be 0..65536"),
    ({"max_retries": -2}, "max_retries >= -1"),
    ({"attempt": -1}, "must be >= 0"),
])
def test_a_malformed_spec_is_named_by_its_field(fields: dict[str, object], named: str) -> None:
    assert named in spec_problem(_spec(**fields))


@pytest.mark.parametrize(("resources", "named"), [
    ({"": 1.0}, "names must be 1..255 printable characters"),
    ({"x" * 256: 1.0}, "names must be 1..255 printable characters"),
    ({"\x00\x01": 1.0}, "names must be 1..255 printable characters"),
    ({"CPU": -1.0}, "must be a finite amount >= 0, got -1.0"),
    ({"CPU": math.nan}, "must be a finite amount >= 0, got nan"),
    ({"CPU": math.inf}, "must be a finite amount >= 0, got inf"),
])
def test_bad_resource_amounts_are_refused(resources: dict[str, float], named: str) -> None:
    assert named in resources_problem("where", resources)
    spec = _spec()
    spec.resources.update(resources)
    assert spec_problem(spec).startswith("spec.resources")


def test_odd_but_legal_resources_pass() -> None:
    assert resources_problem("where", {"CPU": 0.0, "accelerator_type:A100": 1e-4, "é" * 40: 2.0}) == ""
