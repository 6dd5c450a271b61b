"""Errors a user can see are in the tree of ``runtime.exceptions``, each raised where it happens.

No cluster: each test puts one part in the situation (a missing token file, a bad
``CELLRAY_*`` variable, an object file gone, a call that outlives its deadline, a
function the GCS lacks, a cluster process that dies at start) and checks both the new
class and the builtin base that code written for Ray or plain Python catches.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest

from runtime import _session, config
from runtime.api._client import CoreClient
from runtime.cluster.process import ProcessHandle
from runtime.exceptions import (
    ClusterError,
    ClusterStartError,
    ConfigError,
    FunctionNotFoundError,
    NotFoundError,
    ObjectCorruptError,
    ObjectFileMissingError,
    ObjectLostError,
    RpcTimeoutError,
    TokenFileError,
)
from runtime.object_store import SharedMemoryStore, read_object
from runtime.protocol import common_pb2
from runtime.worker.executor import Executor
from runtime.worker.host import WorkerHost


def test_a_missing_token_file_is_a_token_file_error_and_a_file_not_found_error(
        tmp_path: pathlib.Path) -> None:
    with pytest.raises(TokenFileError, match=r"token file .*nope does not exist; pass") as info:
        _session.read_token(tmp_path / "nope")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ClusterError)
    assert info.value.path == str(tmp_path / "nope")


def test_a_bad_environment_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in config.FIELD_NAMES:
        monkeypatch.delenv(config.env_name(name), raising=False)
    monkeypatch.setenv("CELLRAY_RPC_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError, match=r"CELLRAY_RPC_TIMEOUT_S='soon' is not a valid float") as info:
        config.load()
    assert isinstance(info.value, ValueError) and info.value.setting == "rpc_timeout_s"


@pytest.fixture
def store() -> Iterator[SharedMemoryStore]:
    base = pathlib.Path("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
    shm_dir = base / f"cellray-test-errors-{uuid.uuid4().hex[:8]}"
    s = SharedMemoryStore(shm_dir, shm_dir.with_name(shm_dir.name + "-spill"), 1 << 20)
    try:
        yield s
    finally:
        s.close()


def test_an_object_file_that_is_gone_or_empty_is_an_object_lost_error(store: SharedMemoryStore) -> None:
    oid = b"\x01" * 20
    path = store.path_for(oid)
    with pytest.raises(ObjectFileMissingError, match="does not exist; write it") as missing:
        store.seal(oid, 8)
    with pytest.raises(ObjectFileMissingError, match="locate it again") as gone:
        read_object(path)
    for err in (missing.value, gone.value):
        assert isinstance(err, ObjectLostError) and isinstance(err, FileNotFoundError)
    pathlib.Path(path).write_bytes(b"")
    with pytest.raises(ObjectCorruptError, match="is empty") as empty:
        read_object(path)
    pathlib.Path(path).write_bytes(b"1234")
    with pytest.raises(ObjectCorruptError, match="announced 8 bytes") as short:
        store.seal(oid, 8)
    for err in (empty.value, short.value):
        assert isinstance(err, ObjectLostError) and isinstance(err, ValueError)
    assert not os.path.exists(path), "a partial file is removed"


def test_a_cluster_process_that_dies_at_start_is_a_cluster_start_error(tmp_path: pathlib.Path) -> None:
    handle = ProcessHandle("tiny", "runtime_no_such_module", [], tmp_path / "tiny.log",
                           tmp_path / "tiny.ready")
    with pytest.raises(ClusterStartError, match=r"(?s)tiny .* exited with code 1.*No module") as info:
        handle.wait_ready(30)
    assert isinstance(info.value, RuntimeError) and info.value.exit_code == 1


def test_start_in_the_kernel_extension_turns_a_start_failure_into_a_usage_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("IPython")
    from IPython.core.error import UsageError

    import runtime as rt
    from kernel_ext import cluster

    def fail(**_: Any) -> rt.ClusterInfo:
        raise ClusterStartError("node-0 (pid 1) exited with code 1 before it was ready")

    monkeypatch.setattr(rt, "is_initialized", lambda: False)
    monkeypatch.setattr(rt, "init", fail)
    with pytest.raises(UsageError, match=r"%cluster start: node-0 \(pid 1\) exited with code 1"):
        cluster.start(nodes=1, cpus=1, gpus=None, resources=None)


@pytest.fixture
def client() -> Iterator[CoreClient]:
    """A client whose IO loop runs but which never connects (its GCS address is a dead port)."""
    c = CoreClient(node_address="", gcs_address="127.0.0.1:1", token="t", job_id=b"")
    c.start_loop()
    try:
        yield c
    finally:
        c.close()


def test_a_call_past_its_deadline_is_cancelled_and_raises_rpc_timeout_error(client: CoreClient) -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(RpcTimeoutError, match=r"slow did not finish within 0.05 s and was cancelled"):
        client.run(slow(), 0.05)
    assert cancelled.wait(5), "the coroutine kept running after its deadline"

    async def own_timeout() -> None:
        raise TimeoutError("the coroutine's own")

    with pytest.raises(TimeoutError, match="the coroutine's own") as info:
        client.run(own_timeout(), 5)
    assert not isinstance(info.value, RpcTimeoutError)


class _NoFunctions:
    """A GCS client without the function asked for."""

    async def get_function(self, function_id: bytes) -> None:
        return None

    async def close(self) -> None:
        return None


def test_a_function_missing_from_the_gcs_is_a_function_not_found_error(client: CoreClient) -> None:
    real = client.gcs
    client.gcs = cast(Any, _NoFunctions())  # a fake with the one call the executor makes
    try:
        with pytest.raises(FunctionNotFoundError, match=r"function f \(abab.*\) is not in the GCS") as info:
            Executor(client, 4).load_function(b"\xab" * 20, "f")
    finally:
        client.gcs = real
    assert isinstance(info.value, NotFoundError) and isinstance(info.value, LookupError)


def test_a_worker_lends_its_cpu_only_from_the_thread_of_a_task(client: CoreClient) -> None:
    host = WorkerHost(client, Executor(client, 4), b"w")
    assert not host.lends_while_waiting(timed=False), "no task on this thread's stack"
    token = client.push_task(common_pb2.TaskSpec(task_id=b"t" * 16))
    try:
        assert host.lends_while_waiting(timed=False)
        assert not host.lends_while_waiting(timed=True)
        seen: list[bool] = []
        thread = threading.Thread(target=lambda: seen.append(host.lends_while_waiting(timed=False)))
        thread.start()
        thread.join()
        assert seen == [False], "a thread the task started has no task of its own"
    finally:
        client.pop_task(token)
