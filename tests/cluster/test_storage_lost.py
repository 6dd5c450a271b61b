"""Redis gone for good (issue 13, point 7): the GCS exits, the head leaves it stopped and
reports it, and a driver's call that needs the GCS fails at once with an error that says
the GCS stopped because its storage is unreachable (not "unreachable for N s" after the
outage timeout).

A real cluster (``rt.init`` with ``gcs_storage="redis://..."``) on a real ``redis-server``
the test owns and stops. Without redis-server the test skips and says why; in CI it fails.
The first test is pure: what the head's report says, and when a driver believes it.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import cloudpickle
import pytest

import runtime as rt
from runtime import config
from runtime.cluster.supervision import STATUS_FILE, storage_lost
from runtime.exceptions import ConnectionLostError
from runtime.gcs.reconnect import Link, RetryPolicy
from runtime.gcs.redis_servers import LocalRedisServers, redis_server_path
from runtime.testing.wait import wait_for

pytestmark = pytest.mark.cluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])

IN_CI = os.environ.get("CI", "").lower() == "true"
#: The GCS gives up on its storage after 1 s; a call would wait a minute for the GCS.
SETTINGS = config.load(gcs_storage_timeout_s=1.0, gcs_outage_timeout_s=60.0)


def need_redis() -> None:
    if redis_server_path() is None:
        why = ("redis-server is not installed, so a GCS whose Redis is gone is not tested here; "
               "install it with `apt-get install -y redis-server`")
        if IN_CI:
            pytest.fail(f"{why} (.ci/run installs it: CI must test Redis)")
        pytest.skip(why)


def _new() -> str:
    return "new"


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


def test_a_driver_believes_the_heads_report_only_when_it_is_newer_than_the_gcs_last_answer(
        tmp_path: pathlib.Path) -> None:
    assert storage_lost(tmp_path) is None  # no report: no verdict
    report = {"pid": 1, "gcs": 0, "not_restarted": {"gcs": "..."}, "stopped": {"gcs": {
        "code": 3, "pid": 2, "at": 1000.0, "reason": "its storage stayed unreachable (exit code 3)",
        "log": "gcs.log", "error": "GCS storage redis://h:1 has been unreachable for 1.0 s"}}}
    (tmp_path / STATUS_FILE).write_text(json.dumps(report))
    said = storage_lost(tmp_path, since=999.0)
    assert said == ("its storage stayed unreachable (exit code 3); the GCS said: GCS storage "
                    "redis://h:1 has been unreachable for 1.0 s")
    assert storage_lost(tmp_path, since=1001.0) is None  # the GCS answered after that exit
    report["stopped"]["gcs"]["code"] = 0  # type: ignore[index]  # asked to stop: wait for it
    (tmp_path / STATUS_FILE).write_text(json.dumps(report))
    assert storage_lost(tmp_path, since=999.0) is None

    wall = [900.0]
    link = Link("127.0.0.1:1", RetryPolicy(timeout_s=60.0), wall=lambda: wall[0])
    link.head_verdict = lambda session, since: "gone" if since < 950.0 else None
    assert link.answered("c1", "redis://h:1", str(tmp_path)) is None  # answered at 900
    link.lost("UNAVAILABLE: refused")
    backoff = link.backoff()
    assert backoff.next_delay() is None  # the head's verdict came after: waiting cannot help
    err = link.gave_up(backoff, "UNAVAILABLE: refused")
    assert "stopped because its storage is unreachable" in str(err) and "(gone)" in str(err)
    wall[0] = 960.0
    assert link.answered("c1", "redis://h:1", str(tmp_path)) is None  # back (restarted by hand)
    link.lost("UNAVAILABLE: refused")
    assert link.backoff().next_delay() is not None  # that verdict is older: wait for the GCS


def test_redis_gone_for_good_stops_the_gcs_and_a_driver_call_says_so(tmp_path: pathlib.Path) -> None:
    need_redis()
    servers = LocalRedisServers(1, tmp_path / "redis")
    servers.start()
    try:
        url = "redis://" + ",".join(f"{h}:{p}" for h, p in servers.addresses)
        rt.init(num_cpus=1, gcs_storage=url, log_to_driver=False, _settings=SETTINGS)
        head = rt.state.get_head()
        assert head.storage == url
        session = pathlib.Path(head.session_dir)
        actor = rt.remote(Counter).remote()
        assert rt.get(actor.incr.remote(), timeout=60) == 1

        servers.stop()
        # The GCS gives up on its storage after gcs_storage_timeout_s and exits; the head
        # leaves it stopped and says why in supervisor.json and supervisor.log.
        why = wait_for(lambda: storage_lost(session), timeout=60,
                       what="the head to report the GCS stopped for its storage")
        assert why is not None and "its storage stayed unreachable (exit code 3)" in why
        assert "gcs_storage_timeout_s=1" in why, why  # the GCS's own error line
        with pytest.raises(ConnectionLostError, match="stopped because its storage is unreachable") as err:
            rt.remote(_new).remote()  # exporting a new function needs the GCS
        message = str(err.value)
        assert head.address in message and "gcs_storage_timeout_s=1" in message
        assert "supervisor.log" in message and "gcs_outage_timeout_s" not in message  # not the timeout
        assert rt.get(actor.incr.remote(), timeout=60) == 2  # what needs no GCS goes on
    finally:
        rt.shutdown()
        servers.stop()
    log = (session / "logs" / "supervisor.log").read_text()
    said = [line for line in log.splitlines() if "stopped: its storage stayed unreachable" in line]
    assert len(said) == 1 and " ERROR " in said[0] and "It said: GCS storage redis://" in said[0], log
    assert "restarting it on" not in log, log  # never restarted
