"""HTML formatters for ObjectRef, ActorHandle and ClusterInfo, on a real cluster.

The formatters are registered on a bare ``DisplayFormatter`` (what an IPython shell holds
as ``ip.display_formatter``), so no global shell is created or patched.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import cloudpickle
import pytest
from IPython.core.formatters import DisplayFormatter

import runtime as rt
from runtime import config, state
from runtime.testing.wait import wait_for
from widgets import register_formatters, unregister_formatters

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@rt.remote
def square(x: int) -> int:
    return x * x


@rt.remote(num_gpus=8)
def needs_gpus() -> int:
    return 1


@rt.remote
class Learner:
    def ping(self) -> str:
        return "pong"


def shell() -> Any:
    ip = SimpleNamespace(display_formatter=DisplayFormatter())
    register_formatters(ip)
    return ip


def formats(ip: Any, obj: object) -> dict[str, Any]:
    data, _ = ip.display_formatter.format(obj)
    return data


def test_after_shutdown_the_plain_repr_is_shown() -> None:
    info = rt.init(num_cpus=1, log_to_driver=False)
    try:
        ref = square.remote(2)
        assert rt.get(ref) == 4
        ip = shell()
        assert "ready" in formats(ip, ref)["text/html"]
    finally:
        rt.shutdown()
    data = formats(ip, ref)
    assert "text/html" not in data and data["text/plain"] == repr(ref)
    assert "not connected" in formats(ip, info)["text/html"]


def test_actor_is_alive_once_its_first_call_returned() -> None:
    """Issue 15, 3: the repr said PENDING "not registered with the cluster yet" after calls
    to the actor had returned, because it read only the GCS row, which the node writes with
    its next report. The node tells the actor's owner when the constructor returned (ahead
    of any call's result), so the repr says ALIVE right after the first call returned.

    The node reports to the GCS once a minute here: what the repr shows cannot come from
    the GCS row (no row, or a PENDING one), only from what the driver was told."""
    slow_reports = config.load().override(event_flush_ms=60_000)
    rt.init(num_cpus=1, log_to_driver=False, _settings=slow_reports)
    try:
        ip = shell()
        learner = Learner.remote()
        assert rt.get(learner.ping.remote()) == "pong"
        html = formats(ip, learner)["text/html"]  # at once: no waiting for a report
        assert "ALIVE" in html and "PENDING" not in html and learner.actor_id[:12] in html, html
        assert learner.state() == "ALIVE"
        rows = [a.state for a in state.list_actors() if a.actor_id == learner.actor_id]
        assert rows in ([], ["PENDING"]), f"the GCS row came early; the test proves nothing: {rows}"
        for _ in range(4):
            assert rt.get(learner.ping.remote()) == "pong"
        assert "ALIVE" in formats(ip, learner)["text/html"]
    finally:
        rt.shutdown()


def test_object_ref_shows_its_task(cluster: rt.ClusterInfo) -> None:
    ip = shell()
    ref = square.remote(3)
    assert rt.get(ref) == 9
    html = wait_for(lambda: (h := formats(ip, ref).get("text/html", "")) and "FINISHED" in h and h,
                    what="the ref's HTML to show its finished task")
    assert "square" in html and "ready" in html and cluster.node_id[:6] in html
    assert formats(ip, ref)["text/plain"] == repr(ref)   # text/plain is the runtime's own


def test_a_ref_that_waits_says_why(cluster: rt.ClusterInfo) -> None:
    ip = shell()
    ref = needs_gpus.remote()
    try:
        html = wait_for(lambda: (h := formats(ip, ref).get("text/html", "")) and "INFEASIBLE" in h and h,
                        what="the ref's HTML to show it is infeasible")
        assert "not ready" in html and "GPU: 8" in html
    finally:
        rt.cancel(ref)


def test_a_put_ref(cluster: rt.ClusterInfo) -> None:
    html = formats(shell(), rt.put([1, 2, 3]))["text/html"]
    assert "ready" in html and "rt.put" in html


def test_actor_handle(cluster: rt.ClusterInfo) -> None:
    ip = shell()
    learner = Learner.options(name="repr-learner").remote()
    assert rt.get(learner.ping.remote()) == "pong"
    # ALIVE comes at once (the driver knows); node, pid and restarts with the GCS row.
    html = wait_for(lambda: (h := formats(ip, learner).get("text/html", "")) and "ALIVE" in h
                    and "restarts" in h and h, what="the actor's HTML to show its ALIVE row")
    assert "Learner" in html and "repr-learner" in html and "restarts 0/" in html
    assert "pending calls" in html and cluster.node_id[:6] in html
    rt.kill(learner)
    wait_for(lambda: "DEAD" in formats(ip, learner).get("text/html", ""),
             what="the actor's HTML to show DEAD")


def test_cluster_info(cluster: rt.ClusterInfo) -> None:
    html = formats(shell(), cluster)["text/html"]
    assert cluster.address in html and "1 of 1 nodes alive" in html and "CPU " in html
    assert formats(shell(), cluster)["text/plain"] == repr(cluster)


def test_register_twice_then_unregister(cluster: rt.ClusterInfo) -> None:
    ip = shell()
    register_formatters(ip)  # the extension may be loaded twice
    html = ip.display_formatter.formatters["text/html"]
    assert sum(1 for cls in html.type_printers if cls is rt.ObjectRef) == 1
    unregister_formatters(ip)
    assert "text/html" not in formats(ip, cluster)
    unregister_formatters(ip)  # a no-op now
