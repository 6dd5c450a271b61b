"""The progress strip under a cell whose tasks run on, in a real kernel (issue 15, point 4).

The tasks wait for a flag file, so they are unfinished for sure until the test sets it.
The test reads what the frontend would get on iopub: the strip's ``display_data`` (a
widget view whose ``text/plain`` is the strip's line) filed under the cell that started
the tasks, the ``comm_msg`` updates of its model, and the ``update_display_data`` that
puts its final picture in its place. Messages that arrive after a cell ended are drained
from the iopub channel while waiting; nothing here sleeps to let time pass.
"""

from __future__ import annotations

import html
import pathlib
import queue
import re
from typing import Any

import pytest

from runtime.testing.wait import wait_for

pytestmark = [pytest.mark.notebooks, pytest.mark.cluster]

DEFINE = """\
import os, time
import runtime as rt
from kernel_ext import strip as _strip
from runtime.exceptions import GetTimeoutError
from runtime.testing.wait import wait_for

@rt.remote(num_cpus=0, max_retries=0)
def held(i, flag):
    while not os.path.exists(flag):
        time.sleep(0.01)
    return i

def strips():
    return _strip.installed(get_ipython()).statistics()
"""
#: Wait in the kernel until no cell is watched and the strips' thread is gone.
IDLE = ("wait_for(lambda: strips().watched == 0 and not strips().thread_alive, timeout=30,\n"
        "         what='the progress strips to be idle')")

VIEW = "application/vnd.jupyter.widget-view+json"
LINE = re.compile(r"^\d+ tasks?: ")


def drain(kernel: Any) -> None:
    """Move the iopub messages that arrived meanwhile into ``kernel.iopub``."""
    while True:
        try:
            kernel.iopub.append(kernel.kc.get_iopub_msg(timeout=0.05))
        except queue.Empty:
            return


def strips_under(messages: list[dict[str, Any]], msg_id: str) -> list[dict[str, Any]]:
    """The strips displayed under the cell whose request was ``msg_id``."""
    return [m for m in messages if m["msg_type"] == "display_data"
            and m["parent_header"].get("msg_id") == msg_id and VIEW in m["content"]["data"]
            and LINE.match(m["content"]["data"].get("text/plain", ""))]


def strip_of(kernel: Any, msg_id: str) -> dict[str, Any] | None:
    drain(kernel)
    found = strips_under(kernel.iopub, msg_id)
    return found[0] if found else None


def live_lines(kernel: Any, model_id: str) -> list[str]:
    """The texts the strip's model was given, in order (its first state, then updates)."""
    lines = []
    for m in kernel.iopub:
        c = m["content"]
        if m["msg_type"] not in ("comm_open", "comm_msg") or c.get("comm_id") != model_id:
            continue
        value = c.get("data", {}).get("state", {}).get("value")
        if value is not None:
            lines.append(html.unescape(re.sub(r"<[^>]*>", "", value)))
    return lines


def is_get_bar(msg: dict[str, Any]) -> bool:
    """Whether ``msg`` displays rt.get's progress bar (``widgets.progress``)."""
    return str(msg["content"]["data"].get("text/plain", "")).startswith("rt.get")


def final_line(kernel: Any, display_id: str) -> str | None:
    drain(kernel)
    for m in kernel.iopub:
        if (m["msg_type"] == "update_display_data"
                and m["content"].get("transient", {}).get("display_id") == display_id):
            return str(m["content"]["data"]["text/plain"])
    return None


def test_a_cell_whose_tasks_run_on_gets_a_live_strip_then_its_final_line(
        kernel: Any, tmp_path: pathlib.Path) -> None:
    flag = str(tmp_path / "go")
    kernel.check(DEFINE)
    kernel.check(IDLE)
    ex = kernel.check(f"refs = [held.remote(i, {flag!r}) for i in range(6)]")  # returns at once
    shown = wait_for(lambda: strip_of(kernel, ex.msg_id), timeout=30, what="the strip under the cell")
    data = shown["content"]["data"]
    assert data["text/plain"].startswith("6 tasks: 0 done · "), data["text/plain"]
    model_id, display_id = data[VIEW]["model_id"], shown["content"]["transient"]["display_id"]
    running = re.compile(r"^6 tasks: 0 done · [1-6] running · \d pending · 0 failed$")
    wait_for(lambda: drain(kernel) or any(running.match(s) for s in live_lines(kernel, model_id)),
             timeout=30, what="the strip to count running tasks")
    pathlib.Path(flag).touch()
    final = wait_for(lambda: final_line(kernel, display_id), timeout=30, what="the strip's final line")
    assert re.match(r"^6 tasks: 6 done \(in \d+\.\d s\)$", final), final
    # The live widget is closed (its model updates no more), and the thread is gone.
    assert any(m["msg_type"] == "comm_close" and m["content"]["comm_id"] == model_id
               for m in kernel.iopub)
    kernel.check(IDLE)
    assert kernel.check("rt.get(refs)").result == "[0, 1, 2, 3, 4, 5]"
    assert len(strips_under(kernel.iopub, ex.msg_id)) == 1


def test_a_cell_that_starts_no_task_gets_no_strip(kernel: Any) -> None:
    kernel.check(DEFINE)
    kernel.check(IDLE)
    ex = kernel.check("x = 21 * 2\nx")
    assert ex.result == "42"
    assert not strips_under(ex.messages, ex.msg_id)
    # Nothing is watched: no strip can come later either.
    assert kernel.check("strips().watched, strips().thread_alive").result == "(0, False)"


def test_a_get_that_collects_the_cells_work_shows_one_bar_not_two(kernel: Any,
                                                                   tmp_path: pathlib.Path) -> None:
    """rt.get's bar comes up first (it blocks on the cell's tasks): no strip for them."""
    flag = tmp_path / "go"
    kernel.check(DEFINE)
    kernel.check(IDLE)

    def release_on_the_bar(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "display_data" and is_get_bar(msg):
            flag.touch()

    ex = kernel.check(f"sum(rt.get([held.remote(i, {str(flag)!r}) for i in range(4)]))",
                      on_message=release_on_the_bar)
    assert ex.result == "6"
    assert flag.exists(), "the get's bar never showed"
    kernel.check(IDLE)   # the cell is forgotten: its strip can no longer appear
    drain(kernel)
    assert not strips_under(kernel.iopub, ex.msg_id)


def test_once_the_strip_is_up_a_get_on_the_cells_tasks_shows_no_bar(kernel: Any,
                                                                     tmp_path: pathlib.Path) -> None:
    flag = str(tmp_path / "go")
    kernel.check(DEFINE)
    kernel.check(IDLE)
    # Unsuppressed, get's bar would show after 1 s of waiting, before the 1.5 s timeout.
    ex = kernel.check(f"refs = [held.remote(i, {flag!r}) for i in range(3)]\n"
                      "wait_for(lambda: strips().shown == 1, timeout=30, what='the strip')\n"
                      "try:\n    rt.get(refs, timeout=1.5)\nexcept GetTimeoutError:\n"
                      "    print('still held')")
    assert ex.stream() == "still held\n"
    [shown] = strips_under(ex.messages, ex.msg_id)
    assert not [m for m in ex.of_type("display_data") if is_get_bar(m)]
    pathlib.Path(flag).touch()
    display_id = shown["content"]["transient"]["display_id"]
    final = wait_for(lambda: final_line(kernel, display_id), timeout=30, what="the strip's final line")
    assert final.startswith("3 tasks: 3 done (in "), final


def test_progress_strip_can_be_switched_off(kernel: Any, tmp_path: pathlib.Path) -> None:
    flag = str(tmp_path / "go")
    kernel.check(DEFINE)
    kernel.check(IDLE)
    kernel.check("%config CellrayMagics.progress_strip = False")
    try:
        kernel.check(f"refs = [held.remote(i, {flag!r}) for i in range(2)]")
        # The tasks are held: a strip would be watching them now.
        assert kernel.check("strips().watched").result == "0"
        pathlib.Path(flag).touch()
        assert kernel.check("rt.get(refs)").result == "[0, 1]"
    finally:
        kernel.check("%config CellrayMagics.progress_strip = True")
    kernel.check("%env CELLRAY_PROGRESS_STRIP=0")
    try:
        ex = kernel.check(f"refs = [held.remote(i, {flag!r}) for i in range(2)]\nstrips().watched")
        assert ex.result == "0"
        assert kernel.check("rt.get(refs)").result == "[0, 1]"
    finally:
        kernel.check("os.environ.pop('CELLRAY_PROGRESS_STRIP')")


def test_cluster_stop_ends_the_strips_and_their_thread(kernel: Any, tmp_path: pathlib.Path) -> None:
    """Last in the module: it stops the module's cluster (and starts a new one)."""
    never = str(tmp_path / "never-created")
    kernel.check(DEFINE)
    kernel.check(IDLE)
    ex = kernel.check(f"refs = [held.remote(i, {never!r}) for i in range(2)]")
    shown = wait_for(lambda: strip_of(kernel, ex.msg_id), timeout=30, what="the strip under the cell")
    kernel.check("%cluster stop")
    display_id = shown["content"]["transient"]["display_id"]
    final = wait_for(lambda: final_line(kernel, display_id), timeout=30, what="the strip's final line")
    assert re.match(r"^2 tasks: 0 done · 2 unfinished \(cluster disconnected after [\d.]+ s\)$", final), final
    kernel.check(IDLE)
    kernel.check("%cluster start --cpus 2")


def test_unloading_the_extension_ends_live_strips_and_their_thread(kernel: Any,
                                                                  tmp_path: pathlib.Path) -> None:
    """Also stops the module's cluster (the magics started it); loads and starts them again."""
    never = str(tmp_path / "never-created")
    kernel.check(DEFINE)
    kernel.check(IDLE)
    ex = kernel.check(f"refs = [held.remote(i, {never!r}) for i in range(2)]")
    shown = wait_for(lambda: strip_of(kernel, ex.msg_id), timeout=30, what="the strip under the cell")
    kernel.check("%unload_ext kernel_ext")
    final = final_line(kernel, shown["content"]["transient"]["display_id"])
    assert final is not None and re.match(
        r"^2 tasks: 0 done · 2 unfinished \(no longer watched after [\d.]+ s\)$", final), final
    threads = kernel.check("import threading\n"
                           "[t.name for t in threading.enumerate() if t.name == 'cellray-cell-strips']")
    assert threads.result == "[]"
    kernel.check("%load_ext kernel_ext")
    kernel.check("%cluster start --cpus 2")
