"""The magics in a real ipykernel, against a real local cluster started by ``%cluster start``.

What only a kernel shows: output routed by the iopub ``parent_header`` of the cell that
started the work (while it runs, and after it finished while another cell runs),
``Out[n]`` values, error messages with the cell's traceback, and interrupts. Remote cells
that must stay running wait for a flag file that the test creates once it saw what it
waits for; nothing here sleeps to let time pass.
"""

from __future__ import annotations

import pathlib
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = [pytest.mark.notebooks, pytest.mark.cluster]

WAIT_FOR = "import os, time\nwhile not os.path.exists({flag!r}):\n    time.sleep(0.01)\n"


def _flag(tmp_path: pathlib.Path, name: str) -> str:
    return str(tmp_path / name)


def test_remote_cell_streams_lines_in_order_before_it_ends(kernel: Any, tmp_path: pathlib.Path) -> None:
    flag = _flag(tmp_path, "seen")
    code = ("%%remote\nimport sys\nfor i in range(3):\n    print(f'line {i}', flush=True)\n"
            "print('to stderr', file=sys.stderr, flush=True)\n"
            + WAIT_FOR.format(flag=flag) + "'done'")
    seen: list[str] = []

    def on_message(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            seen.append(msg["content"]["text"])
            if "line 2" in "".join(seen):
                pathlib.Path(flag).touch()  # only now may the remote cell finish

    ex = kernel.check(code, on_message=on_message)
    assert ex.stream("stdout") == "line 0\nline 1\nline 2\n"  # in order, no prefix
    assert ex.stream("stderr") == "to stderr\n"  # a stderr stream of its own
    assert ex.result == "'done'"
    assert pathlib.Path(flag).exists()


def test_value_out_and_pull(kernel: Any) -> None:
    kernel.check("base = 20")
    ex = kernel.check("%%remote --pull doubled,label --out answer\n"
                      "doubled = base * 2\nlabel = f'base was {base}'\ndoubled + 2")
    assert ex.result == "42"
    ex = kernel.check("(doubled, label, answer)")
    assert ex.result == "(40, 'base was 20', 42)"
    assert kernel.check("%remote base + 1").result == "21"


def test_traceback_shows_the_cells_lines_and_keeps_the_type(kernel: Any) -> None:
    ex = kernel.execute("%%remote\nnumerator = 1\ndenominator = 0\nnumerator / denominator\n")
    assert not ex.ok
    error = ex.error
    assert error is not None and error["ename"] == "ZeroDivisionError"
    text = "\n".join(error["traceback"])
    assert re.search(r'File "<cell-\d+>", line 3, in <module>\n\s+numerator / denominator', text), text
    assert "kernel_ext" not in text  # neither the worker's exec frames nor the magic's
    ex = kernel.check("try:\n    %remote 1 / 0\n"
                      "except ZeroDivisionError as e:\n    caught = type(e).__name__\ncaught")
    assert ex.result == "'ZeroDivisionError'"


def test_no_block_output_lands_under_the_cell_that_started_it(kernel: Any, tmp_path: pathlib.Path) -> None:
    remote_go, local_go = _flag(tmp_path, "remote-go"), _flag(tmp_path, "local-go")
    first = kernel.check("%%remote --no-block --out fut\n" + WAIT_FOR.format(flag=remote_go)
                         + "print('late line from the first cell', flush=True)\n7")
    assert not first.of_type("execute_result")  # --out: the future is displayed, not returned
    [shown] = first.of_type("display_data")
    assert "RemoteCell" in shown["content"]["data"]["text/plain"]
    display_id = shown["content"]["transient"]["display_id"]
    late: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []

    def on_message(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and "late line" in msg["content"]["text"]:
            late.append(msg)
        if msg["msg_type"] == "update_display_data":
            updates.append(msg)
        if late and updates:
            pathlib.Path(local_go).touch()  # lets the second cell end

    # The second cell runs (and holds the kernel) while the first cell's work prints.
    second = kernel.execute(f"import pathlib\npathlib.Path({remote_go!r}).touch()\n"
                            + WAIT_FOR.format(flag=local_go) + "print('second cell output')",
                            on_message=on_message)
    assert second.ok
    assert [m["parent_header"]["msg_id"] for m in late] == [first.msg_id]
    assert "late line" not in second.stream()
    [update] = updates
    assert update["parent_header"]["msg_id"] == first.msg_id
    assert update["content"]["transient"]["display_id"] == display_id
    assert "finished" in update["content"]["data"]["text/plain"]
    assert kernel.check("fut.result()").result == "7"


def test_plain_task_and_actor_output_follows_its_cell(kernel: Any, tmp_path: pathlib.Path) -> None:
    go, local_go = _flag(tmp_path, "go"), _flag(tmp_path, "local-go")
    first = kernel.check(
        "import runtime as rt\n"
        "@rt.remote\ndef chatty(flag):\n" + "\n".join("    " + line for line in
                                                      WAIT_FOR.format(flag=go).splitlines()) +
        "\n    print('task printed late', flush=True)\n"
        "@rt.remote\nclass Talker:\n    def say(self, flag):\n" + "\n".join(
            "        " + line for line in WAIT_FOR.format(flag=go).splitlines()) +
        "\n        print('actor printed late', flush=True)\n"
        f"ref = chatty.remote({go!r})\ntalker = Talker.remote()\naref = talker.say.remote({go!r})")
    found: dict[str, dict[str, Any]] = {}

    def on_message(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            for what in ("task printed late", "actor printed late"):
                if what in msg["content"]["text"]:
                    found[what] = msg
        if len(found) == 2:
            pathlib.Path(local_go).touch()

    second = kernel.execute(f"import pathlib\npathlib.Path({go!r}).touch()\n"
                            + WAIT_FOR.format(flag=local_go), on_message=on_message)
    assert second.ok
    assert {k: m["parent_header"]["msg_id"] for k, m in found.items()} == {
        "task printed late": first.msg_id, "actor printed late": first.msg_id}
    assert re.search(r"^\(chatty pid=\d+\) task printed late$",
                     found["task printed late"]["content"]["text"], re.MULTILINE)
    assert re.search(r"^\(Talker.say pid=\d+\) actor printed late$",
                     found["actor printed late"]["content"]["text"], re.MULTILINE)
    kernel.check("rt.get([ref, aref]); rt.kill(talker)")


def test_interrupt_cancels_the_remote_cell(kernel: Any, tmp_path: pathlib.Path) -> None:
    never = _flag(tmp_path, "never-created")
    interrupted: list[bool] = []

    def on_message(msg: dict[str, Any]) -> None:
        if (msg["msg_type"] == "stream" and "waiting forever" in msg["content"]["text"]
                and not interrupted):
            interrupted.append(True)
            kernel.km.interrupt_kernel()

    ex = kernel.execute("%%remote\nprint('waiting forever', flush=True)\n" + WAIT_FOR.format(flag=never),
                        on_message=on_message)
    assert interrupted
    assert ex.error is not None and ex.error["ename"] == "KeyboardInterrupt"
    assert len(ex.error["traceback"]) == 1, ex.error["traceback"]
    assert re.match(r"KeyboardInterrupt: cancelled %%remote cell \[\d+\] \(task [0-9a-f]{12}\); "
                    r"it stopped with KeyboardInterrupt\.", ex.error["traceback"][0])
    # The cluster is free again: a new remote cell runs at once.
    assert kernel.check("%remote 40 + 2").result == "42"


def _messages_until(kernel: Any, found: Callable[[list[dict[str, Any]]], bool], what: str,
                    timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every iopub message seen, reading more (output that came after its cell went idle)
    until ``found(messages)``."""
    deadline = time.monotonic() + timeout
    while not found(kernel.iopub):
        kernel.iopub.append(kernel._next(kernel.kc.get_iopub_msg, deadline, what))
    return list(kernel.iopub)


def test_an_infeasible_tasks_warning_shows_under_the_cell_that_submitted_it(kernel: Any) -> None:
    """Issue 15, 3: the warning came under the cell that started the cluster (its thread
    is the connection's IO thread), not under the cell that submitted the task."""
    kernel.check("harmless = sum(range(10))")
    submitting = kernel.check("import runtime as rt\n@rt.remote(num_gpus=4)\ndef train():\n    return 1\n"
                              "big = train.remote()")

    def warnings(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [m for m in messages if m["msg_type"] == "stream"
                and "Warning: Task train() needs" in m["content"]["text"]]

    try:
        # It may come after the cell ended: it still lands under it.
        [warning] = warnings(_messages_until(kernel, lambda ms: bool(warnings(ms)),
                                             "the infeasible warning"))
        assert warning["parent_header"]["msg_id"] == submitting.msg_id
        assert warning["content"]["name"] == "stderr"
        assert "GPU: 4" in warning["content"]["text"]
    finally:
        kernel.check("rt.cancel(big)")


def test_cluster_status_is_a_table_with_a_text_fallback(kernel: Any) -> None:
    ex = kernel.check("%cluster status")
    [shown] = ex.of_type("display_data")
    data = shown["content"]["data"]
    assert "<table>" in data["text/html"] and "CPU" in data["text/html"]
    assert "live node(s)" in data["text/plain"] and "CPU" in data["text/plain"]


def test_get_on_many_refs_shows_a_progress_bar_when_it_blocks(kernel: Any) -> None:
    # The tasks take 1.5 s (their work, not the test waiting on time): get blocks past
    # the 1 s delay, so the bar appears, then is replaced by its final picture.
    kernel.check("import time, runtime as rt\n"
                 "@rt.remote(num_cpus=0)\ndef slow(i):\n    time.sleep(1.5)\n    return i")
    ex = kernel.check("sum(rt.get([slow.remote(i) for i in range(4)]))")
    assert ex.result == "6"
    shown = [m["content"]["data"] for m in ex.of_type("display_data", "update_display_data")]
    assert any("application/vnd.jupyter.widget-view+json" in d for d in shown), shown
    assert any("4/4" in d.get("text/plain", "") for d in shown), shown


def test_second_interrupt_kills_a_cell_that_ignores_the_first(kernel: Any, tmp_path: pathlib.Path) -> None:
    """A cell that swallows KeyboardInterrupt: the second interrupt kills its worker."""
    kernel.check("%config CellrayMagics.soft_cancel_grace = 60")  # only the 2nd interrupt forces
    interrupts: list[str] = []

    def on_message(msg: dict[str, Any]) -> None:
        if msg["msg_type"] != "stream":
            return
        text = msg["content"]["text"]
        if ("stubborn" in text and not interrupts) or ("ignored" in text and len(interrupts) == 1):
            interrupts.append(text)
            kernel.km.interrupt_kernel()

    try:
        ex = kernel.execute("%%remote\nimport time\nprint('stubborn', flush=True)\nwhile True:\n"
                            "    try:\n        time.sleep(0.01)\n    except KeyboardInterrupt:\n"
                            "        print('ignored', flush=True)\n", on_message=on_message)
    finally:
        kernel.check("%config CellrayMagics.soft_cancel_grace = 3.0")
    assert len(interrupts) == 2
    assert ex.error is not None and ex.error["ename"] == "KeyboardInterrupt"
    assert "forced: its worker process was killed" in ex.error["traceback"][0], ex.error["traceback"]
