"""Loading, unloading and argument errors of the magics, in a real IPython shell.

None of these needs a cluster, except the unload test, which starts one with
``%cluster start`` to check that unloading stops it.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import runtime as rt
from runtime import _session
from runtime.cluster.local import LocalCluster

pytestmark = [pytest.mark.notebooks]


def run(shell: Any, code: str) -> tuple[Any, Any]:
    """Run ``code`` as a cell in ``shell``: ``(ExecutionResult, captured output)``."""
    with capture_output() as cap:
        result = shell.run_cell(code, store_history=True)
    return result, cap


def test_loading_twice_is_harmless(shell: Any) -> None:
    registry = shell.magics_manager.registry
    before = registry["CellrayMagics"]
    result, _cap = run(shell, "%load_ext kernel_ext")
    assert result.success
    assert registry["CellrayMagics"] is before
    import kernel_ext
    kernel_ext.load_ipython_extension(shell)  # IPython may call it again itself
    assert registry["CellrayMagics"] is before


def test_cluster_without_a_cluster_says_how_to_start_one(shell: Any) -> None:
    result, cap = run(shell, "%cluster")
    assert result.success
    assert "No cluster is running. Start one with `%cluster start" in cap.stdout


def test_remote_without_a_cluster_is_a_usage_error(shell: Any) -> None:
    result, _cap = run(shell, "%%remote\n1 + 1")
    assert isinstance(result.error_in_exec, UsageError)
    assert "needs a cluster" in str(result.error_in_exec)
    assert "%cluster start" in str(result.error_in_exec)


@pytest.mark.parametrize("line, message", [
    ("%cluster start --cpus -1", "argument --cpus: expected a number >= 0, got '-1'"),
    ("%cluster start --nodes 0", "argument --nodes: expected a whole number >= 1"),
    ("%cluster launch", "invalid choice: 'launch'"),
    ("%cluster attach", "%cluster attach needs the cluster's address"),
    ("%cluster status --cpus 2", "%cluster status does not take --cpus"),
    ("%cluster start 10.0.0.1:6380", "did you mean `%cluster attach 10.0.0.1:6380`"),
    ("%cluster start --resources '[1]'", "expected a JSON object of name -> amount"),
    ("%cluster start --resources '{\"CPU\": 2}'", "use --cpus instead of 'CPU'"),
    ("%%remote --pull 1x\npass", "expected comma-separated Python names"),
    ("%%remote --gpus many\npass", "argument --gpus: expected a number"),
    ("%%remote --out a.b\npass", "expected a Python name"),
    ("%%remote --bogus\npass", "unrecognized arguments: --bogus"),
    ("%remote --cpus 2", "%remote needs an expression"),
    ("%push", "the following arguments are required: NAME"),
])
def test_bad_arguments_give_a_short_usage_message(shell: Any, line: str, message: str) -> None:
    result, cap = run(shell, line)
    err = result.error_in_exec
    assert isinstance(err, UsageError), repr(err)
    assert message in str(err)
    # IPython shows a UsageError as its message only: no traceback.
    assert "Traceback" not in cap.stderr and "UsageError: " in cap.stderr


def test_help_comes_from_the_magics_docstrings(shell: Any) -> None:
    import kernel_ext.magics
    doc = kernel_ext.magics.__doc__ or ""
    for magic in ("%cluster", "%remote", "%push", "%pull"):
        assert magic in doc
    assert "--no-block" in doc and "--session NAME" in doc




def test_attach_without_a_token_names_the_token_file_flag(
        shell: Any, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_session, "ROOT", tmp_path)  # no session here knows the address
    result, _cap = run(shell, "%cluster attach 127.0.0.1:6399")
    err = str(result.error_in_exec)
    assert isinstance(result.error_in_exec, UsageError), repr(result.error_in_exec)
    assert ("%cluster attach 127.0.0.1:6399: No token for the cluster at 127.0.0.1:6399: pass "
            "--token-file PATH (the token file printed by `cellray start --head`") in err
    assert "token_file" not in err and not rt.is_initialized()


@pytest.mark.cluster
def test_attach_to_a_running_cluster_and_detach(shell: Any, tmp_session_root: pathlib.Path) -> None:
    with LocalCluster(session_root=tmp_session_root) as cluster:
        result, cap = run(shell,
                          f"%cluster attach {cluster.address} --token-file {tmp_session_root / 'nope'}")
        assert isinstance(result.error_in_exec, UsageError)
        assert f"%cluster attach {cluster.address}: token file" in str(result.error_in_exec)
        wrong = tmp_session_root / "wrong-token"
        wrong.write_text("0" * 64)
        result, cap = run(shell, f"%cluster attach {cluster.address} --token-file {wrong}")
        refused = str(result.error_in_exec)
        assert isinstance(result.error_in_exec, UsageError) and "wrong cluster token" in refused
        # The hint names the magic's flag, not rt.init()'s keyword.
        assert f"Attach with %cluster attach {cluster.address} --token-file PATH" in refused
        assert "token_file" not in refused and not rt.is_initialized()
        try:
            result, cap = run(shell, f"%cluster attach {cluster.address} --token-file {cluster.token_file}")
            assert result.success, result.error_in_exec
            assert f"Attached to the cluster at {cluster.address}" in cap.stdout
            result, cap = run(shell, "%%remote\nprint('hello from the attached cluster')\n6 * 7")
            assert result.result == 42
            assert cap.stdout.startswith("hello from the attached cluster\n")
        finally:
            result, cap = run(shell, "%cluster stop")
        assert f"Disconnected from the cluster at {cluster.address}; it keeps running." in cap.stdout
        assert not rt.is_initialized()
        assert cluster.head is not None and cluster.head.alive()


@pytest.mark.cluster
def test_unload_removes_the_magics_and_stops_the_cluster_it_started(shell: Any) -> None:
    """Runs last: unloads, checks, and loads again for the module's teardown."""
    assert not rt.is_initialized()
    run(shell, "%cluster start --cpus 1")
    assert rt.is_initialized()
    result, cap = run(shell, "%unload_ext kernel_ext")
    assert result.success
    assert not rt.is_initialized()
    for kind, name in (("line", "cluster"), ("cell", "remote"), ("line", "remote"), ("line", "push")):
        assert name not in shell.magics_manager.magics[kind]
    result, cap = run(shell, "%load_ext kernel_ext")
    assert "%cluster start" in cap.stdout
    assert "cluster" in shell.magics_manager.magics["line"]
