"""The magics through a real IPython shell (``run_cell`` inside ``capture_output``).

What a cell ships and the errors that stop it before anything runs, values,
``--pull``/``--out``, sessions with ``%push``/``%pull``, output prefixes, futures and
re-defined remote functions. The cluster is a real local one, started with
``%cluster start`` once for the module.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import runtime as rt
from runtime import state
from runtime.testing.wait import wait_for

pytestmark = [pytest.mark.notebooks, pytest.mark.cluster]


def run(shell: Any, code: str) -> tuple[Any, Any]:
    """Run ``code`` as a cell in ``shell``: ``(ExecutionResult, captured output)``."""
    with capture_output() as cap:
        result = shell.run_cell(code, store_history=True)
    return result, cap


# ---- with the module's cluster ------------------------------------------------------------


def test_start_again_reuses_the_cluster_and_says_so(shell_cluster: Any) -> None:
    info = rt.init(ignore_reinit_error=True)
    result, cap = run(shell_cluster, "%cluster start --cpus 1")
    assert result.success
    assert "already connected" in cap.stdout and "reusing it" in cap.stdout
    assert rt.init(ignore_reinit_error=True) == info


def test_status_shows_html_and_text(shell_cluster: Any) -> None:
    result, cap = run(shell_cluster, "%cluster status")
    assert result.success
    [out] = cap.outputs
    assert "<table>" in out.data["text/html"]
    assert re.search(r"CPU \d+(\.\d+)?/2", out.data["text/plain"]), out.data["text/plain"]


def test_value_pull_out_and_streamed_lines(shell_cluster: Any) -> None:
    shell = shell_cluster
    run(shell, "import math\nbase = 16")
    result, cap = run(shell, "%%remote --pull root,note --out value\n"
                             "print('computing', flush=True)\nroot = math.sqrt(base)\n"
                             "note = 'from the worker'\nroot * 10")
    assert result.success, result.error_in_exec
    assert result.result == 40.0
    assert cap.stdout.startswith("computing\n")
    ns = shell.user_ns
    assert (ns["root"], ns["note"], ns["value"]) == (4.0, "from the worker", 40.0)
    result, _ = run(shell, "%remote base * 2")
    assert result.result == 32


def test_modules_are_shipped_as_imports(shell_cluster: Any) -> None:
    shell = shell_cluster
    run(shell, "import json as serializer")
    result, _ = run(shell, "%%remote\nserializer.__name__, serializer.dumps([1])")
    assert result.result == ("json", "[1]")


def test_unpicklable_name_is_named_and_nothing_runs(shell_cluster: Any) -> None:
    shell = shell_cluster
    run(shell, "import threading\nlock = threading.Lock()")
    before = len(state.list_tasks(name="cell-unpicklable", limit=None))
    result, cap = run(shell, "%%remote --name cell-unpicklable\nprint('this ran')\nlock")
    err = result.error_in_exec
    assert isinstance(err, UsageError)
    assert "cannot send 'lock' (lock) to the cluster: it cannot be pickled" in str(err)
    assert "Nothing was run" in str(err)
    assert "this ran" not in cap.stdout
    assert len(state.list_tasks(name="cell-unpicklable", limit=None)) == before


def test_large_name_warns_and_suggests_put(shell_cluster: Any) -> None:
    shell = shell_cluster
    shell.user_ns["payload"] = b"x" * 11_000_000
    try:
        result, cap = run(shell, "%%remote\nlen(payload)")
    finally:
        del shell.user_ns["payload"]
    assert result.result == 11_000_000
    assert "'payload' is 10.5 MiB pickled" in cap.stderr
    assert "rt.put(payload)" in cap.stderr


def test_syntax_error_points_at_the_cells_line(shell_cluster: Any) -> None:
    result, cap = run(shell_cluster, "%%remote\nx = 1\ny = (\n")
    err = result.error_in_exec
    assert isinstance(err, SyntaxError)
    assert err.filename.startswith("<cell-") and err.lineno == 2 and err.text.startswith("y = (")
    assert "y = (" in cap.stdout + cap.stderr


def test_remote_exception_keeps_its_type_and_shows_the_cell(shell_cluster: Any) -> None:
    result, cap = run(shell_cluster, "%%remote\nitems = {}\nitems['missing']")
    err = result.error_in_exec
    assert type(err) is KeyError
    assert 'File "<cell-' in cap.stdout + cap.stderr or 'File "<cell-' in "".join(err._render_traceback_())
    rendered = "\n".join(err._render_traceback_())
    assert "line 2, in <module>\n    items['missing']" in rendered


def test_sessions_keep_a_namespace_and_push_pull(shell_cluster: Any) -> None:
    shell = shell_cluster
    result, _ = run(shell, "%%remote --session s1\ncounter = 10")
    assert result.success, result.error_in_exec
    result, _ = run(shell, "%%remote --session s1\ncounter += 1\ncounter")
    assert result.result == 11
    shell.user_ns["sent"] = [1, 2, 3]
    result, _ = run(shell, "%push --session s1 sent")
    assert result.success, result.error_in_exec
    result, _ = run(shell, "%remote --session s1 sum(sent) + counter")
    assert result.result == 17
    result, _ = run(shell, "%%remote --session s1\nmade_there = 'hello'")
    result, _ = run(shell, "%pull --session s1 made_there counter")
    assert result.success, result.error_in_exec
    assert (shell.user_ns["made_there"], shell.user_ns["counter"]) == ("hello", 11)
    result, _ = run(shell, "%pull --session s1 nothing_like_this")
    assert isinstance(result.error_in_exec, UsageError)
    assert "'nothing_like_this' is not defined" in str(result.error_in_exec)
    result, _ = run(shell, "%pull --session nosuch x")
    assert isinstance(result.error_in_exec, UsageError)
    assert "There is no session 'nosuch'" in str(result.error_in_exec)


def test_redefined_remote_function_runs_its_new_definition(shell_cluster: Any) -> None:
    shell = shell_cluster
    run(shell, "import runtime as rt")
    run(shell, "@rt.remote\ndef version():\n    return 'first'")
    result, _ = run(shell, "rt.get(version.remote())")
    assert result.result == "first"
    run(shell, "@rt.remote\ndef version():\n    return 'second'")
    result, _ = run(shell, "rt.get(version.remote())")
    assert result.result == "second"
    # ... also when a remote cell calls it (shipped with the cell, then nested)
    result, _ = run(shell, "%remote rt.get(version.remote())")
    assert result.result == "second"


def test_task_output_has_a_prefix_and_remote_cell_output_has_none(shell_cluster: Any) -> None:
    shell = shell_cluster
    run(shell, "@rt.remote\ndef shout():\n    print('from the task')\n")
    _result, cap = run(shell, "rt.get(shout.remote())")
    assert cap.stdout.startswith("(shout pid=") and "from the task" in cap.stdout
    _result, cap = run(shell, "%%remote\nprint('from the cell')")
    assert cap.stdout == "from the cell\n"
    _result, cap = run(shell, "%%remote --session quiet\nprint('from the session')")
    assert cap.stdout == "from the session\n"


def test_no_block_future(shell_cluster: Any) -> None:
    shell = shell_cluster
    result, _cap = run(shell, "%%remote --no-block --pull late\nlate = 'pulled'\n'value'")
    fut = result.result
    assert "RemoteCell" in repr(fut)
    assert fut.result(timeout=60) == "value"
    assert shell.user_ns["late"] == "pulled"
    assert "finished in" in repr(fut) and "'value'" in repr(fut)
    assert fut.done() and not fut.cancel()


def test_dashboard_magic_shows_the_live_dashboard(shell_cluster: Any) -> None:
    result, cap = run(shell_cluster, "%cluster dashboard")
    assert result.success, result.error_in_exec
    [out] = cap.outputs
    # The widget's text fallback: a readable summary, not a widget id.
    assert "application/vnd.jupyter.widget-view+json" in out.data
    assert out.data["text/plain"].startswith("cellray dashboard")
    magics = shell_cluster.magics_manager.registry["CellrayMagics"]
    dash = magics.dashboard
    try:
        wait_for(lambda: "node" in dash.summary().lower(), timeout=20,
                 what="the dashboard's summary to list the cluster's nodes")
    finally:
        run(shell_cluster, "%cluster dashboard")  # replacing it closes the first one
        assert magics.dashboard is not dash
        magics.dashboard.close()
        magics.dashboard = None


def test_object_refs_and_clusters_get_rich_html_reprs(shell_cluster: Any) -> None:
    run(shell_cluster, "import runtime as rt\nref = rt.put(41)")
    # Registered on %load_ext (a terminal shell keeps HTML output off, so ask the formatter).
    html = shell_cluster.display_formatter.formatters["text/html"]
    ref = shell_cluster.user_ns["ref"]
    text = html.lookup(ref)(ref)
    assert "ObjectRef" in text and "ready" in text.lower()

