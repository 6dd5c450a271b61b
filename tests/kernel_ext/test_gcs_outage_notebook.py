"""A GCS outage as a notebook user sees it (issue 13, points 1 and 4).

- ``%cluster start --gcs-storage memory`` (and the default, SQLite) in a real kernel: the
  head reports the storage, and the dashboard's header shows it.
- A real kernel attached to a cluster whose GCS is killed: a cell that needs the GCS (a
  new remote function) shows "GCS reconnecting…" once, with no traceback, and completes
  once the GCS is back, with the "is back" line under the same cell.
- The dashboard, built in this process against a real cluster: its header shows the
  storage, "GCS reconnecting… (N s)" while the GCS is away, and neither once it is back.

The clusters the test owns have a head told not to restart its GCS, and the test starts
it again by hand (same port, storage and session) when it chooses: no race with a
restart. Real processes and a real kernel throughout; the test waits on state.
"""

from __future__ import annotations

import os
import pathlib
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.utils.capture import capture_output

import runtime as rt
from kernel_ext.routing import OutputRouter
from runtime import config
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.cluster.process import ProcessHandle
from runtime.cluster.restarts import RestartPolicy
from runtime.gcs.reconnect import RECONNECTING, Link, RetryPolicy
from runtime.testing.wait import wait_for
from tests.kernel_ext.conftest import Kernel
from widgets import Dashboard

FAST = config.load(heartbeat_ms=100, node_timeout_ms=2000, gcs_outage_timeout_s=60)

#: Waits (inside the kernel) until the dashboard of ``%cluster dashboard`` shows the head's
#: storage, then prints what it shows.
DASHBOARD_HEADER = """
from runtime.testing.wait import wait_for
dash = get_ipython().magics_manager.registry["CellrayMagics"].dashboard
wait_for(lambda: dash.statistics()["head"], timeout=60, what="the dashboard to show the head")
print("head:", rt.state.get_head().storage)
print("header:", dash._header.value)
print("summary:", dash.summary())
"""


class GcsByHand:
    """The cluster's GCS started again by hand: its port, storage, session and settings."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.handle: ProcessHandle | None = None

    def start(self) -> None:
        c, s = self.cluster, self.cluster.settings
        assert c.session_dir is not None and c.token_file is not None
        host, port = c.address.rsplit(":", 1)
        args = ["--host", host, "--port", port, "--num-shards", str(s.gcs_shards),
                "--heartbeat-ms", str(s.heartbeat_ms), "--node-timeout-ms", str(s.node_timeout_ms),
                "--gcs-storage", c.storage, "--session-dir", str(c.session_dir),
                "--token-file", str(c.token_file), "--parent-pid", str(os.getpid())]
        ready = c.session_dir / "gcs-by-hand.ready"
        ready.unlink(missing_ok=True)
        self.handle = ProcessHandle("gcs", "runtime.gcs", args, c.session_dir / "logs" / "gcs.log", ready,
                                    env={**os.environ, **s.to_env()})
        self.handle.wait_ready(s.start_timeout_s)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()


def _kill_gcs(cluster: LocalCluster) -> None:
    """kill -9 the GCS, and reap it (its head was told to leave it dead)."""
    assert cluster.head is not None
    os.kill(cluster.head.pid, signal.SIGKILL)
    cluster.head.popen.wait()


@pytest.fixture
def owned(tmp_path: pathlib.Path) -> Iterator[tuple[LocalCluster, GcsByHand]]:
    """A cluster on SQLite whose head never restarts its GCS: the test does, by hand."""
    cluster = LocalCluster([NodeSpec(num_cpus=1)], settings=FAST, session_root=tmp_path / "s",
                           gcs_storage="sqlite", restart_policy=RestartPolicy(max_restarts=0)).start()
    by_hand = GcsByHand(cluster)
    try:
        yield cluster, by_hand
    finally:
        if cluster.head is not None and not cluster.head.alive() and by_hand.handle is None:
            by_hand.start()  # a test that failed during the outage: let its drivers say goodbye
        try:
            rt.shutdown()
        finally:
            cluster.stop()
            by_hand.stop()


def _stderr_lines(messages: list[dict[str, Any]]) -> list[str]:
    return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream"
                   and m["content"]["name"] == "stderr").splitlines()


def test_the_outage_lines_go_to_the_cell_that_waits_and_nobody_is_told_between_cells() -> None:
    router = OutputRouter(object())  # no kernel: the lines are printed, as in a terminal
    link = Link("127.0.0.1:1", RetryPolicy(timeout_s=20.0), notify=router.on_gcs_line)
    assert link.answered("c1", "sqlite", "/s") is None
    link.lost("UNAVAILABLE: refused")
    with capture_output() as idle:
        link.waiting()  # a dashboard asks while no cell runs: nobody to tell
    assert idle.stderr == ""
    with capture_output() as cell:
        router._cell_starts()
        link.waiting()
        link.waiting()  # once per outage
        router._cell_ends()
        assert link.answered("c1", "sqlite", "/s") is None  # back: said to the cell told
    lines = cell.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(RECONNECTING), lines
    assert lines[1].startswith("cellray: the GCS at 127.0.0.1:1 is back after"), lines


def test_cluster_start_takes_gcs_storage_and_the_dashboard_header_shows_it(kernel: Kernel) -> None:
    # The module's cluster: started with `%cluster start --cpus 2`, SQLite by default.
    kernel.check("import runtime as rt\n%cluster dashboard")
    shown = kernel.check(DASHBOARD_HEADER).stream()
    head = next(line for line in shown.splitlines() if line.startswith("head: "))[len("head: "):]
    assert head.startswith("sqlite:///") and head.endswith("/gcs.db"), shown
    assert f"storage {head} · GCS restarts 0" in shown.split("header:", 1)[1], shown
    assert f"Head: storage {head}" in shown.split("summary:", 1)[1], shown

    kernel.check("%cluster stop")
    started = kernel.check("%cluster start --cpus 1 --gcs-storage memory")
    assert "Started a local cluster" in started.stream(), started.stream()
    kernel.check("%cluster dashboard")  # the one shown before stopped with its cluster
    shown = kernel.check(DASHBOARD_HEADER).stream()
    assert "head: memory\n" in shown, shown
    assert "storage memory · GCS restarts 0" in shown.split("header:", 1)[1], shown
    kernel.check("%cluster stop")
    bad = kernel.execute("%cluster start --gcs-storage nosuch://x")
    said = bad.stream("stderr")  # a UsageError: its message, no traceback
    assert not bad.ok and "UsageError: %cluster start:" in said and "nosuch://x" in said, said
    assert "Traceback" not in said, said


def test_a_cell_that_needs_the_gcs_during_an_outage_says_reconnecting_once_then_completes(
        kernel: Kernel, owned: tuple[LocalCluster, GcsByHand]) -> None:
    cluster, by_hand = owned
    kernel.check("%cluster stop")  # attach to the test's cluster instead of the module's
    try:
        kernel.check(f"%cluster attach {cluster.address} --token-file {cluster.token_file}")
        kernel.check("import runtime as rt\nrt.get(rt.remote(lambda: 1).remote(), timeout=60)")
        _kill_gcs(cluster)

        def on_message(msg: dict[str, Any]) -> None:  # the GCS comes back once the cell waits
            if by_hand.handle is None and any(line.startswith(RECONNECTING) for line in _stderr_lines([msg])):
                by_hand.start()

        ex = kernel.execute("def fresh(x):\n    return x + 1\n"
                            "print('result', rt.get(rt.remote(fresh).remote(41), timeout=120))",
                            on_message=on_message, timeout=180)
        assert ex.ok and ex.error is None, ex.error
        assert "result 42" in ex.stream("stdout"), ex.messages
        said = _stderr_lines(ex.messages)
        waiting = [line for line in said if line.startswith(RECONNECTING)]
        assert len(waiting) == 1, said
        assert cluster.address in waiting[0] and "wait up to" in waiting[0], waiting
        assert [line for line in said if "is back after" in line] == [
            line for line in said if line.startswith(f"cellray: the GCS at {cluster.address} is back after")]
        assert len([line for line in said if "is back after" in line]) == 1, said
        assert not any("Traceback" in line or "Error" in line for line in said), said
        # Nowhere else: not under the cell that attached, nor any other.
        elsewhere = [m for m in kernel.iopub if m["parent_header"].get("msg_id") != ex.msg_id
                     and "reconnecting" in str(m["content"].get("text", ""))]
        assert not elsewhere, elsewhere
        assert by_hand.handle is not None and by_hand.handle.alive()
        again = kernel.check("print('again', rt.get(rt.remote(fresh).remote(1), timeout=60))")
        assert "again 2" in again.stream() and not _stderr_lines(again.messages)
    finally:
        kernel.execute("%cluster stop", timeout=60)  # detaches; the cluster is the test's


def test_the_dashboard_shows_the_storage_and_gcs_reconnecting_during_a_real_outage(
        owned: tuple[LocalCluster, GcsByHand]) -> None:
    cluster, by_hand = owned
    rt.init(address=cluster.address, token_file=str(cluster.token_file), log_to_driver=False,
            _settings=FAST)
    dash = Dashboard(interval=0.05)
    try:
        storage = f"storage {cluster.storage} · GCS restarts 0"
        wait_for(lambda: dash.statistics()["head"] == storage, timeout=60,
                 what="the dashboard to show the head's storage")
        assert cluster.storage.startswith("sqlite:///") and storage in dash._header.value
        assert "reconnecting" not in dash._header.value

        _kill_gcs(cluster)
        # Nothing is asked of the GCS here: the dashboard's own subscription finds it away.
        wait_for(lambda: "GCS reconnecting… (" in dash._header.value, timeout=60,
                 what="the header to say the GCS is away")
        assert storage in dash._header.value  # what was known of the head stays shown
        assert dash.statistics()["gcs_away_s"] is not None
        assert "GCS reconnecting… (" in dash.summary() and "running work goes on" in dash.summary()

        by_hand.start()
        # Its subscription starts over once the GCS is back: "connecting…", then "live".
        wait_for(lambda: "reconnecting" not in dash._header.value and dash.status == "live", timeout=60,
                 what="the header back to normal and the feed live once the GCS is back")
        assert storage in dash._header.value
        assert "reconnecting" not in dash.summary() and dash.statistics()["gcs_away_s"] is None
    finally:
        dash.close()
