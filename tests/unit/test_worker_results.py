"""How a worker reports a failed task: which failures the node may run again."""

from __future__ import annotations

import types

from runtime import _ids
from runtime.exceptions import ConnectionLostError
from runtime.protocol import common_pb2, node_pb2
from runtime.worker import results


def _report(exc: BaseException, *, retry_exceptions: bool = False) -> node_pb2.TaskResult:
    spec = common_pb2.TaskSpec(task_id=_ids.new_id(), name="f", num_returns=2,
                               retry_exceptions=retry_exceptions)
    res = node_pb2.TaskResult()
    client = types.SimpleNamespace(node_id=b"n" * 16)
    results.failed(client, res, spec, exc)  # type: ignore[arg-type]
    return res


def test_a_gcs_outage_while_loading_the_function_is_a_system_failure_run_again() -> None:
    res = _report(ConnectionLostError("The GCS at 127.0.0.1:1 has been unreachable for 20.0 s"))
    assert res.failed and res.retryable
    assert [r.object_id[-4:] for r in res.returns] == [b"\x01\x00\x00\x00", b"\x02\x00\x00\x00"]


def test_an_error_of_the_users_code_is_run_again_only_with_retry_exceptions() -> None:
    assert not _report(ValueError("bad row")).retryable
    assert _report(ValueError("bad row"), retry_exceptions=True).retryable
