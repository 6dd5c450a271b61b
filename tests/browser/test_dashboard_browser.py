"""The dashboard in a real browser: JupyterLab + Chromium, driven by Playwright.

A notebook written into a temporary root starts a cluster, displays ``widgets.Dashboard``
and submits a batch of tasks that wait for a flag file. The test reads the Futures
section's "finished" number, sets the flag, and waits (in the page, with
``wait_for_function``) until the number changes and then reaches the batch size. It saves
a screenshot to ``test-artifacts/dashboard.png``.

Then a cell puts a 5 MiB array and prints what ``runtime.state`` says, as the kernel reads
it: the task runs (``list_tasks``), their workers, and the put's size (``list_objects``).
The test reads that output and checks the page against it: the Timeline's SVG draws every
run (its bars' ``data-runs`` add up to the runs; runs that would overlap on screen share a
bar) on one lane per worker, and the Object store's largest object has the put's size.
It zooms the timeline to 30 s with its dropdown and saves element screenshots of the two
sections (``test-artifacts/timeline.png``, ``test-artifacts/objects.png``). A last cell
stops the cluster, and the server (which stops the kernel) is stopped in ``finally``.

Recipe (see the shared notes on browser tests): Debian's ``/usr/bin/chromium``, never a
downloaded browser; the server on 127.0.0.1, port 0, with a token; its readiness is the
``jpserver-<pid>.json`` file it writes once it listens, never a sleep.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from runtime.state import format_bytes
from runtime.testing.wait import wait_for

REPO = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
BATCH = 40

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` "
                "(make test does when it can)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                               "(pip install playwright; never `playwright install`)")

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-dev-shm-usage"]

FINISHED = ".cellray-dashboard .cellray-count-finished .cellray-num"
PENDING = ".cellray-dashboard .cellray-count-pending .cellray-num"
RUNNING = ".cellray-dashboard .cellray-count-running .cellray-num"
SENT_AHEAD = ".cellray-dashboard .cellray-count-sent-ahead .cellray-num"
TIMELINE = ".cellray-dashboard .cellray-timeline"
BARS = f"{TIMELINE} .cellray-timeline-chart svg rect.cellray-bar"
LANES = f"{TIMELINE} .cellray-timeline-chart svg g.cellray-lane"
OBJECTS = ".cellray-dashboard .cellray-objects"
LARGEST_SIZE = f"{OBJECTS} .cellray-largest-objects td.cellray-object-size"
#: What the kernel prints from runtime.state after the batch (cell 3).
STATE_LINE = re.compile(r"runs (\d+) workers (\d+) largest (\d+)")


def _cell(source: str) -> dict[str, Any]:
    return {"cell_type": "code", "execution_count": None, "id": secrets.token_hex(4),
            "metadata": {}, "outputs": [], "source": source}


def write_notebook(path: pathlib.Path, flag: pathlib.Path) -> None:
    cells = [
        _cell("import runtime as rt\n"
              "from widgets import Dashboard\n"
              "rt.init(num_cpus=2, log_to_driver=False)\n"
              "dash = Dashboard(interval=0.1)\n"
              "dash"),
        _cell("import os, time\n\n"
              "@rt.remote\n"
              "def work(i, flag):\n"
              "    while not os.path.exists(flag):  # held until the test sets the flag\n"
              "        time.sleep(0.01)\n"
              "    return i\n\n"
              f"refs = [work.remote(i, {str(flag)!r}) for i in range({BATCH})]\n"
              "len(refs)"),
        _cell("print('sum', sum(rt.get(refs)))"),
        _cell("import numpy as np\n"
              "from runtime import state\n"
              "from runtime.testing.wait import wait_for\n"
              "big = rt.put(np.zeros(5 * 1024 * 1024 // 8))\n"
              "obj = wait_for(lambda: next((o for o in state.list_objects(limit=None)\n"
              "                             if o.object_id == big.hex()), None), what='the put')\n"
              "runs = [t for t in state.list_tasks(limit=None) if t.start_time is not None]\n"
              "workers = {(t.node_id, t.worker_pid) for t in runs}\n"
              "print('runs', len(runs), 'workers', len(workers), 'largest', obj.size)"),
        _cell("dash.close()\nrt.shutdown()\nprint('cluster stopped')"),
    ]
    nb = {"cells": cells, "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb, indent=1))


class Lab:
    """A JupyterLab server on 127.0.0.1 (port 0), with its token and its own directories."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.runtime_dir = tmp / "jupyter-runtime"
        self.log_path = tmp / "jupyter.log"
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> Lab:
        self.root.mkdir()
        env = dict(os.environ)
        env.update({
            "JUPYTER_RUNTIME_DIR": str(self.runtime_dir),
            "JUPYTERLAB_SETTINGS_DIR": str(self.tmp / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.tmp / "lab-workspaces"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        })
        env.pop("CELLRAY_ADDRESS", None)
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", "--port=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.getuid() == 0:
            cmd.append("--allow-root")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        info = wait_for(self._server_info, timeout=120, interval=0.1,
                        what="JupyterLab to write its server info file (it listens then)")
        self.port = int(info["port"])
        wait_for(self._answers, timeout=60, interval=0.1, what="JupyterLab to answer /api/status")
        return self

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {self.proc.returncode}:\n{self.log_tail()}")

    def _server_info(self) -> dict[str, Any] | None:
        self._check_alive()
        assert self.proc is not None
        path = self.runtime_dir / f"jpserver-{self.proc.pid}.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # not there yet, or half written
            return None

    def _answers(self) -> bool:
        self._check_alive()
        try:
            with urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM: the server shuts its kernels down, then exits; SIGKILL the group if it hangs."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def lab(tmp_path: pathlib.Path) -> Iterator[Lab]:
    server = Lab(tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()


def run_cell(page: Any, index: int) -> None:
    """Select cell ``index`` and run it (Shift+Enter), as a user would.

    Lab can drop a keypress that arrives while the notebook panel is still settling, so
    this checks that the cell was queued (its prompt turns ``[*]`` or ``[n]``), and presses
    again only when it was not: a cell never runs twice.
    """
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputPrompt")
    for _ in range(5):
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        try:
            page.wait_for_function("(el) => /\\[(\\*|\\d+)\\]/.test(el.textContent)",
                                   arg=prompt.element_handle(), timeout=15_000)
            return
        except sync_api.TimeoutError:
            continue
    raise AssertionError(f"cell {index} did not start running after 5 tries (prompt {prompt.text_content()!r})")


def outputs(page: Any) -> str:
    """Every cell's prompt and output text, for failure messages."""
    lines = []
    for i, cell in enumerate(page.locator(".jp-Notebook .jp-Cell").all()):
        out = " | ".join(o.strip() for o in cell.locator(".jp-OutputArea-output").all_text_contents())
        lines.append(f"cell {i} {cell.locator('.jp-InputPrompt').text_content()} {out[:500]}")
    return "\n".join(lines)


def text_of(page: Any, selector: str) -> str:
    return (page.text_content(selector) or "").strip()


def test_dashboard_moves_in_jupyterlab(lab: Lab, tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "go"
    write_notebook(lab.root / "dashboard.ipynb", flag)
    ARTIFACTS.mkdir(exist_ok=True)
    shot, failure_shot = ARTIFACTS / "dashboard.png", ARTIFACTS / "dashboard-failure.png"
    timeline_shot, objects_shot = ARTIFACTS / "timeline.png", ARTIFACTS / "objects.png"
    for old in (shot, failure_shot, timeline_shot, objects_shot):
        old.unlink(missing_ok=True)  # a picture left by an earlier run proves nothing
    errors: list[str] = []
    stopped = False
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1500})
        try:
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(120_000)
            page.goto(lab.url("dashboard.ipynb"))
            page.wait_for_selector(".jp-Notebook .jp-Cell .jp-InputArea-editor")
            # The kernel starts by itself (the notebook names python3); if Lab asks, accept.
            page.wait_for_function(
                "() => document.querySelector('.jp-Dialog .jp-mod-accept') !== null || "
                "[...document.querySelectorAll('.jp-Notebook-ExecutionIndicator')]"
                ".some(e => e.getAttribute('data-status') === 'idle')")
            if page.locator(".jp-Dialog .jp-mod-accept").count():
                page.click(".jp-Dialog .jp-mod-accept")

            run_cell(page, 0)
            page.wait_for_selector(".cellray-dashboard", state="visible")
            page.wait_for_selector(".cellray-dashboard .cellray-node")  # the snapshot arrived
            run_cell(page, 1)
            # All held: none finished, the batch pending, sent ahead to a busy worker, or running.
            page.wait_for_function(
                "([p, a, r, n]) => { const v = s => Number(document.querySelector(s)?.textContent);"
                " return v(p) + v(a) + v(r) === n; }", arg=[PENDING, SENT_AHEAD, RUNNING, BATCH])
            first = text_of(page, FINISHED)
            assert first == "0", f"nothing can have finished yet, the dashboard says {first}"

            flag.touch()  # let the tasks finish; the dashboard must move on its own
            page.wait_for_function(
                "([sel, old]) => { const e = document.querySelector(sel);"
                " return e !== null && e.textContent.trim() !== old; }", arg=[FINISHED, first])
            page.wait_for_function(
                "([sel, n]) => document.querySelector(sel)?.textContent.trim() === String(n)",
                arg=[FINISHED, BATCH])
            assert [text_of(page, c) for c in (PENDING, SENT_AHEAD, RUNNING)] == ["0", "0", "0"]
            # Latest tasks name the function; the chart counted the local decisions.
            assert "work" in text_of(page, ".cellray-dashboard .cellray-latest-tasks")
            chart = text_of(page, ".cellray-dashboard .cellray-decisions-chart svg")
            assert f"{BATCH} local" in chart, chart
            run_cell(page, 2)  # a cell runs while the dashboard is displayed
            page.wait_for_selector(f".jp-OutputArea-output:has-text('sum {sum(range(BATCH))}')")
            page.locator(".cellray-dashboard").screenshot(path=str(shot))

            run_cell(page, 3)  # what runtime.state says, read by the kernel
            said = page.locator(".jp-Notebook .jp-Cell").nth(3).locator(".jp-OutputArea-output",
                                                                       has_text=STATE_LINE)
            said.wait_for()
            match = STATE_LINE.search(said.text_content() or "")
            assert match is not None
            runs, workers, size = (int(g) for g in match.groups())
            assert runs == BATCH, f"runtime.state lists {runs} task runs, the notebook ran {BATCH}"
            # The timeline: every run drawn (runs that would overlap on screen share a bar,
            # which counts them in data-runs), a lane per worker (all ran within its 5 min).
            page.wait_for_function(
                "([sel, n]) => [...document.querySelectorAll(sel)]"
                ".reduce((sum, e) => sum + Number(e.getAttribute('data-runs')), 0) === n",
                arg=[BARS, runs])
            assert page.locator(LANES).count() == workers
            # The object store: the put is the largest object, with its size.
            page.wait_for_function(
                "([sel, n]) => document.querySelector(sel)?.getAttribute('data-bytes') === String(n)",
                arg=[LARGEST_SIZE, size])
            assert text_of(page, LARGEST_SIZE) == format_bytes(size)
            assert "rt.put" in text_of(page, f"{OBJECTS} .cellray-largest-objects")
            page.locator(OBJECTS).screenshot(path=str(objects_shot))
            # Zoom in with the dropdown: the chart redraws over 30 s.
            page.select_option(f"{TIMELINE} .cellray-timeline-zoom select", label="30 s")
            page.wait_for_selector(f"{TIMELINE} .cellray-timeline-chart svg[data-window='30']")
            page.locator(TIMELINE).screenshot(path=str(timeline_shot))

            run_cell(page, 4)
            page.wait_for_selector(".jp-OutputArea-output:has-text('cluster stopped')")
            stopped = True
        except Exception as e:
            try:
                page.screenshot(path=str(failure_shot), full_page=True)
                cells = outputs(page)
            except Exception as why:  # the page itself is gone
                cells = f"(could not read the page: {why})"
            raise AssertionError(f"{e}\n--- cells ---\n{cells}\npage errors: {errors}\n"
                                 f"screenshot: {failure_shot}\n--- jupyter log ---\n{lab.log_tail()}") from e
        finally:
            browser.close()
    assert stopped and shot.exists() and timeline_shot.exists() and objects_shot.exists()
    assert not [e for e in errors if "widget" in e.lower() or "cellray" in e.lower()], errors

