"""How a GCS client rides out an outage (``runtime.gcs.reconnect``), on a fake clock.

The waits between tries double up to a cap, with jitter, and stop at the call's deadline;
an outage is logged once when it starts and once when it ends, and a person at a driver
is told once; a GCS that names another cluster is refused for good.
"""

from __future__ import annotations

import logging

import pytest

from runtime import config
from runtime.exceptions import ConfigError, ConnectionLostError
from runtime.gcs.reconnect import Backoff, ClusterIdentity, Link, Outage, RetryPolicy

ADDRESS = "127.0.0.1:6380"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_waits_double_up_to_the_cap_and_stop_at_the_deadline() -> None:
    clock = FakeClock()
    backoff = Backoff(RetryPolicy(timeout_s=5.0, first_s=0.5, max_s=2.0), clock=clock, rand=lambda: 1.0)
    delays = []
    while (delay := backoff.next_delay()) is not None:
        delays.append(delay)
        clock.now += delay
    # 0.5 + 1 + 2 = 3.5 s waited; the next step (2 s) would pass the deadline: only 1.5 s is left.
    assert delays == [0.5, 1.0, 2.0, 1.5]
    assert backoff.waited() == pytest.approx(5.0)
    assert backoff.failures == len(delays) + 1


def test_jitter_keeps_each_wait_between_half_and_all_of_its_step() -> None:
    clock = FakeClock()
    low = Backoff(RetryPolicy(timeout_s=60.0, first_s=0.1, max_s=0.4), clock=clock, rand=lambda: 0.0)
    assert [low.next_delay() for _ in range(4)] == [0.05, 0.1, 0.2, 0.2]


def test_the_deadline_counts_from_the_first_failure_and_zero_gives_up_at_once() -> None:
    clock = FakeClock()
    backoff = Backoff(RetryPolicy(timeout_s=1.0), clock=clock, rand=lambda: 1.0)
    clock.now += 0.999
    assert backoff.next_delay() == pytest.approx(0.001)
    clock.now += 0.001
    assert backoff.next_delay() is None
    assert Backoff(RetryPolicy(timeout_s=0.0), clock=clock).next_delay() is None


def test_a_policy_refuses_bounds_that_make_no_sense() -> None:
    with pytest.raises(ValueError, match="first_s <= max_s"):
        RetryPolicy(timeout_s=1.0, first_s=2.0, max_s=1.0)
    with pytest.raises(ValueError):
        RetryPolicy(timeout_s=-1.0)


def test_the_settings_hold_the_policy_and_validate_it() -> None:
    s = config.Settings()
    assert s.gcs_outage_timeout_s > 0 and 0 < s.gcs_retry_s < s.gcs_retry_max_s
    with pytest.raises(ConfigError, match=r"gcs_retry_max_s .* must be more than gcs_retry_s"):
        config.Settings(gcs_retry_s=2.0, gcs_retry_max_s=1.0)
    with pytest.raises(ConfigError, match="CELLRAY_GCS_OUTAGE_TIMEOUT_S"):
        config.Settings(gcs_outage_timeout_s=0)


def test_an_outage_starts_once_and_says_how_long_it_lasted() -> None:
    clock = FakeClock()
    outage = Outage(clock)
    assert outage.back() is None and outage.lasted() == 0.0
    assert outage.lost("UNAVAILABLE: refused")
    clock.now += 2.0
    assert not outage.lost("UNAVAILABLE: again")  # the same outage
    assert outage.cause == "UNAVAILABLE: refused" and outage.lasted() == 2.0
    assert outage.back() == 2.0
    assert outage.since is None


def test_the_first_cluster_id_is_kept_and_an_empty_one_cannot_be_told_apart() -> None:
    identity = ClusterIdentity()
    assert identity.same("")  # a GCS that names no cluster
    assert identity.same("aaa") and identity.cluster_id == "aaa"
    assert identity.same("aaa") and identity.same("")
    assert not identity.same("bbb")
    assert identity.cluster_id == "aaa"


def test_a_link_logs_an_outage_once_and_tells_a_person_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    told: list[str] = []
    link = Link(ADDRESS, RetryPolicy(timeout_s=20.0), notify=told.append, clock=clock)
    assert not link.may_retry(sent=False, resend=True)  # never reached: no cluster there
    assert link.answered("c1", "sqlite:///x/gcs.db", "/x") is None
    assert link.verified and link.connections == 1 and link.storage == "sqlite:///x/gcs.db"
    with caplog.at_level(logging.INFO, logger="runtime.gcs.reconnect"):
        for _ in range(3):
            link.lost("UNAVAILABLE: Socket closed")
            link.waiting()
        assert not link.verified
        clock.now += 3.0
        assert link.answered("c1", "sqlite:///x/gcs.db", "/x") is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "lost the GCS at 127.0.0.1:6380 (UNAVAILABLE: Socket closed)" in lines[0]
    assert "back after 3.0 s" in lines[1]
    assert len(told) == 2 and "reconnecting" in told[0] and "back after 3.0 s" in told[1]
    assert link.connections == 2


def test_a_link_retries_what_cannot_have_been_sent_only_when_told_so() -> None:
    link = Link(ADDRESS, RetryPolicy(timeout_s=1.0), wait_first=True)
    assert link.may_retry(sent=False, resend=True)  # waits for a GCS it never reached
    assert link.may_retry(sent=True, resend=True)
    assert link.may_retry(sent=False, resend=False)
    assert not link.may_retry(sent=True, resend=False)  # it may be done already
    link.waits = False  # a process that stops waits for no GCS
    assert not link.may_retry(sent=False, resend=True)


def test_a_gcs_that_names_another_cluster_is_refused_for_good() -> None:
    link = Link(ADDRESS, RetryPolicy(timeout_s=1.0))
    assert link.answered("old-cluster-id", "memory", "/s") is None
    link.lost("UNAVAILABLE: refused")
    refused = link.answered("new-cluster-id", "memory", "/s")
    assert isinstance(refused, ConnectionLostError) and refused is link.new_cluster
    assert getattr(refused, "cluster_restarted", None) is True
    message = str(refused)
    assert "restarted without persistent storage" in message and "--gcs-storage sqlite" in message
    assert "runtime.init()" in message
    assert link.answered("old-cluster-id", "memory", "/s") is refused  # no way back
    assert link.outage.since is None and link.connections == 1


def test_giving_up_names_the_wait_the_setting_and_the_log() -> None:
    clock = FakeClock()
    link = Link(ADDRESS, RetryPolicy(timeout_s=2.0), clock=clock)
    link.answered("c", "sqlite", "/tmp/session_x")
    backoff = link.backoff()
    clock.now += 2.5
    assert backoff.next_delay() is None
    err = link.gave_up(backoff, "UNAVAILABLE: refused")
    assert isinstance(err, ConnectionLostError) and isinstance(err, ConnectionError)
    assert "unreachable for 2.5 s" in str(err) and "gcs_outage_timeout_s = 2 s" in str(err)
    assert "/tmp/session_x/logs/gcs.log" in str(err) and "CELLRAY_GCS_OUTAGE_TIMEOUT_S" in str(err)
