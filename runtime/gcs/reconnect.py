"""How a GCS client rides out a GCS outage: backoff, a deadline, and which cluster answers.

No I/O: the clock and the random source are injected. ``runtime.gcs.client.GcsClient``
tells its ``Link`` what its calls see (a call found the GCS away, a ``Ping`` answered) and
does what it decides (wait and try again, give up, refuse a cluster that is not its own):

- ``Backoff``: the waits of one call that needs the GCS while it is away. They double from
  ``RetryPolicy.first_s`` up to ``RetryPolicy.max_s``, with jitter (so that the callers
  of a cluster do not all knock at once when the GCS comes back), and end at the call's
  deadline, ``RetryPolicy.timeout_s`` (``Settings.gcs_outage_timeout_s``) after its first
  failure: then the call fails with ``unreachable_error``.
- ``Outage``: whether the GCS is away now and since when, so that an outage is logged once
  when it starts and once when it ends, however many calls fail meanwhile.
- ``ClusterIdentity``: the cluster id the GCS first named (``PingReply.cluster_id``). A GCS
  back from durable storage names the same one; a GCS restarted without persistence
  makes a new cluster with a new id, and ``new_cluster_error`` says so.
- ``Link``: the three above for one client, and what it tells people: the outage logged
  once when it starts and once when it ends, and (``notify``) a line that starts with
  ``RECONNECTING`` ("GCS reconnecting…") when a call first waits and one when the GCS is
  back. Its owner may give it ``head_verdict``, which asks the head whether it left the GCS
  stopped for good (its storage gone): a waiting call then fails at once with
  ``head_stopped_error``, which says so, rather than after its deadline.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from runtime.exceptions import ConnectionLostError

__all__ = ["RECONNECTING", "Backoff", "ClusterIdentity", "HeadVerdict", "Link", "Outage", "RetryPolicy",
           "head_stopped_error", "new_cluster_error", "unreachable_error"]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
#: ``head_verdict(session_dir, since)``: why the head left the GCS stopped for good (its
#: storage is gone) after ``since`` (wall-clock seconds), or None: it did not, or cannot say.
HeadVerdict = Callable[[str, float], str | None]

#: How the line that tells a person that a call waits for the GCS starts (the dashboard
#: shows the same words while the GCS is away).
RECONNECTING = "GCS reconnecting…"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long, and how often, a call tries to reach a GCS that went away."""

    #: Seconds a call waits for the GCS to come back, from its first failure
    #: (``Settings.gcs_outage_timeout_s``); 0 gives up at the first failure.
    timeout_s: float
    #: The first wait between tries, in seconds (``Settings.gcs_retry_s``) ...
    first_s: float = 0.05
    #: ... doubled after each failed try, up to this (``Settings.gcs_retry_max_s``).
    max_s: float = 1.0

    def __post_init__(self) -> None:
        if not (self.timeout_s >= 0 and 0 < self.first_s <= self.max_s):
            raise ValueError(f"need timeout_s >= 0 and 0 < first_s <= max_s, got {self.timeout_s}, "
                             f"{self.first_s}, {self.max_s}")


class Backoff:
    """The waits between the tries of one call, until its deadline.

    Examples
    --------
    >>> b = Backoff(RetryPolicy(timeout_s=10), clock=lambda: 0.0, rand=lambda: 1.0)
    >>> b.next_delay(), b.next_delay(), b.next_delay()
    (0.05, 0.1, 0.2)
    """

    def __init__(self, policy: RetryPolicy, *, clock: Clock = time.monotonic,
                 rand: Callable[[], float] = random.random,
                 stop: Callable[[], bool] | None = None) -> None:
        self.policy = policy
        self._clock = clock
        self._rand = rand
        #: Asked before each wait: True ends the waits early (waiting cannot help).
        self._stop = stop
        #: When the first failure happened (the deadline counts from there).
        self.started = clock()
        self._next = policy.first_s
        #: Tries that failed so far.
        self.failures = 0

    @property
    def deadline(self) -> float:
        return self.started + self.policy.timeout_s

    def waited(self) -> float:
        """Seconds since the first failure."""
        return self._clock() - self.started

    def next_delay(self) -> float | None:
        """Seconds to wait before the next try, or None: the deadline passed, give up.

        A delay is between half and all of the current step (jitter), never past the
        deadline; the step doubles after each call, up to ``max_s``. None at once when
        ``stop`` says waiting cannot help.
        """
        self.failures += 1
        left = self.deadline - self._clock()
        if left <= 0 or (self._stop is not None and self._stop()):
            return None
        step = self._next
        self._next = min(step * 2, self.policy.max_s)
        return min(step * (0.5 + 0.5 * self._rand()), left)


class Outage:
    """Whether the GCS is away now, and since when (on the client's monotonic clock)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        #: When the current outage started, or None while the GCS answers.
        self.since: float | None = None
        #: What the first failed call of the current outage got.
        self.cause = ""

    def lost(self, cause: str) -> bool:
        """A call could not reach the GCS; True when this starts an outage (log it then)."""
        if self.since is not None:
            return False
        self.since, self.cause = self._clock(), cause
        return True

    def back(self) -> float | None:
        """The GCS answered; the length of the outage this ends in seconds, or None."""
        if self.since is None:
            return None
        lasted, self.since, self.cause = self._clock() - self.since, None, ""
        return lasted

    def lasted(self) -> float:
        """Seconds the current outage has lasted (0 when there is none)."""
        return 0.0 if self.since is None else self._clock() - self.since


class ClusterIdentity:
    """The id of the cluster a client belongs to: the first one its GCS named."""

    def __init__(self) -> None:
        #: The first non-empty cluster id seen, or "" before any.
        self.cluster_id = ""

    def same(self, seen: str) -> bool:
        """True when ``seen`` is this client's cluster (the first id seen is adopted). A GCS
        that names no cluster (``""``, an older head) cannot be told apart: it passes."""
        if not seen or not self.cluster_id:
            self.cluster_id = self.cluster_id or seen
            return True
        return seen == self.cluster_id


def unreachable_error(address: str, waited: float, timeout: float, cause: str,
                      session_dir: str = "") -> ConnectionLostError:
    """The error of a call that waited ``timeout`` seconds for the GCS to come back, in vain."""
    logs = f"{session_dir}/logs/gcs.log" if session_dir else "the head's logs/gcs.log"
    return ConnectionLostError(
        f"The GCS at {address} has been unreachable for {waited:.1f} s (last error: {cause}); this "
        f"call gave up after waiting gcs_outage_timeout_s = {timeout:g} s for it to come back. "
        f"Work already running goes on. Is the head still running? A supervised head restarts "
        f"its GCS within seconds; see {logs}, or raise CELLRAY_GCS_OUTAGE_TIMEOUT_S to wait longer.",
        address=address, waited_s=waited, timeout_s=timeout)


def head_stopped_error(address: str, waited: float, verdict: str,
                       session_dir: str = "") -> ConnectionLostError:
    """The error of a call that needs a GCS the head left stopped because its storage is
    unreachable (``verdict``: the head's words, and the GCS's own error line)."""
    logs = f"{session_dir}/logs" if session_dir else "the head's logs"
    return ConnectionLostError(
        f"The GCS at {address} stopped because its storage is unreachable, and the head does not "
        f"restart it ({verdict}). This call gave up after {waited:.1f} s; work already running goes "
        f"on, but what needs the GCS fails until the cluster is started again. Bring the storage "
        f"back (is its Redis server running?), then start the cluster again on the same storage to "
        f"keep its tables: runtime.shutdown() and runtime.init(gcs_storage=...), or `cellray stop` "
        f"and `cellray start --head --gcs-storage ...`. See {logs}/supervisor.log and {logs}/gcs.log.",
        address=address, waited_s=waited, storage_lost=True)


def new_cluster_error(address: str, was: str, now: str, storage: str) -> ConnectionLostError:
    """The error once the GCS at ``address`` came back as another cluster (``now``, not ``was``)."""
    backend = storage or "memory"
    return ConnectionLostError(
        f"The cluster's GCS at {address} restarted without persistent storage (storage: "
        f"{backend}) and came back as a new, empty cluster (id {now[:12]}, was {was[:12]}): the "
        f"nodes, actors, functions and objects of the old cluster are gone, and this connection "
        f"cannot go on. Call runtime.shutdown() and runtime.init() to start over. To keep a "
        f"cluster through a GCS restart, give its head durable storage: `cellray start --head` "
        f"uses SQLite by default (`--gcs-storage sqlite`), as does rt.init(gcs_storage=\"sqlite\").",
        address=address, cluster_id=was, new_cluster_id=now, storage=backend, cluster_restarted=True)


class Link:
    """What one GCS client knows of its connection: whether a ``Ping`` vouched for the GCS
    since the connection last broke, the outage under way, the cluster it belongs to.

    Parameters
    ----------
    address
        The GCS address (for messages).
    policy
        How long and how often a call tries again.
    wait_first
        Whether a call waits for a GCS never reached yet (else it fails at once: there
        may be no cluster there at all).
    notify
        Called with a line for people when a call first waits in an outage (it starts
        with ``RECONNECTING``), and when the GCS is back after one (only when the first
        was told). It may return False: nobody could be told now (a notebook with no cell
        running); the next call that waits tells again. With it, the outage's log lines
        are INFO (the person was told already), else WARNING (a daemon's log is where
        people look).
    clock
        Monotonic seconds.
    wall
        Wall-clock seconds (to compare with what the head reports, ``head_verdict``).
    """

    def __init__(self, address: str, policy: RetryPolicy, *, wait_first: bool = False,
                 notify: Callable[[str], object] | None = None, clock: Clock = time.monotonic,
                 wall: Clock = time.time) -> None:
        self.address = address
        self.policy = policy
        self._wait_first = wait_first
        self._notify = notify
        self._clock = clock
        self._wall = wall
        self.outage = Outage(clock)
        self.identity = ClusterIdentity()
        #: A ping vouched for the GCS, and no call failed since.
        self.verified = False
        #: Pings that found the GCS, the first contact included: it grows after an outage.
        self.connections = 0
        #: Set once the GCS turned out to be another cluster: the error every call raises.
        self.new_cluster: ConnectionLostError | None = None
        #: What the GCS said of itself in its last ``Ping`` ("" before one).
        self.storage = self.session_dir = ""
        #: False: calls fail at their first failure (a stopping process waits for no GCS).
        self.waits = True
        #: Asks the head whether it left the GCS stopped for good (None: never asks).
        self.head_verdict: HeadVerdict | None = None
        #: When a ``Ping`` last answered (wall clock): the head's verdicts before it are old.
        self.answered_at = 0.0
        self._verdict: str | None = None
        self._announced = False
        self._level = logging.INFO if notify is not None else logging.WARNING

    def lost(self, cause: str) -> None:
        """A call found the GCS away: the next call pings it first."""
        self.verified = False
        if self.connections and self.outage.lost(cause):
            logger.log(self._level, "lost the GCS at %s (%s); work that does not need it goes on, "
                       "calls that need it wait up to %g s for it to come back", self.address, cause,
                       self.policy.timeout_s)

    def may_retry(self, sent: bool, resend: bool) -> bool:
        """Whether a call that found the GCS away tries again: not when it may have been
        carried out already and must not be twice (``sent``, not ``resend``), nor when the
        GCS was never reached (unless ``wait_first``)."""
        return self.waits and (resend or not sent) and bool(self.connections or self._wait_first)

    def backoff(self) -> Backoff:
        """The waits of a call that just failed for the first time; they end early once the
        head says it left the GCS stopped for good (``head_verdict``)."""
        return Backoff(self.policy, clock=self._clock, stop=self._stopped_for_good)

    def _stopped_for_good(self) -> bool:
        """Whether the head reported, since the GCS last answered, that it leaves it stopped."""
        if self.head_verdict is None or not self.session_dir:
            return False
        try:
            self._verdict = self.head_verdict(self.session_dir, self.answered_at)
        except Exception as e:  # noqa: BLE001 - a report that cannot be read: wait as usual
            logger.debug("could not read the head's report in %s: %s", self.session_dir, e)
            self._verdict = None
        return self._verdict is not None

    def waiting(self) -> None:
        """A call waits for the GCS: tell people, once per outage (again when nobody could
        be told)."""
        if self._announced or self._notify is None or not self.connections:
            return
        told = self._notify(f"{RECONNECTING} the GCS at {self.address} does not answer; calls that "
                            f"need it wait up to {self.policy.timeout_s:g} s for it to come back "
                            "(running work goes on).")
        self._announced = told is not False

    def gave_up(self, backoff: Backoff, cause: str) -> ConnectionLostError:
        """The error of a call whose backoff ended: the head's verdict when it gave one,
        else the GCS stayed unreachable until the call's deadline."""
        if self._verdict is not None:
            return head_stopped_error(self.address, backoff.waited(), self._verdict, self.session_dir)
        return unreachable_error(self.address, backoff.waited(), self.policy.timeout_s, cause,
                                 self.session_dir)

    def answered(self, cluster_id: str, storage: str, session_dir: str) -> ConnectionLostError | None:
        """A ``Ping`` answered: None when it is this client's cluster (an outage ends), else
        the error to raise from now on (``new_cluster``; the client's owner says it once)."""
        if self.new_cluster is not None:
            return self.new_cluster
        if not self.identity.same(cluster_id):
            self.new_cluster = new_cluster_error(self.address, self.identity.cluster_id, cluster_id, storage)
            self.outage.back()
            return self.new_cluster
        self.storage, self.session_dir = storage, session_dir
        self.answered_at, self._verdict = self._wall(), None
        self.verified = True
        self.connections += 1
        lasted = self.outage.back()
        if lasted is not None:
            logger.log(self._level, "the GCS at %s is back after %.1f s (cluster %s, storage %s)",
                       self.address, lasted, self.identity.cluster_id[:12] or "-", storage or "-")
            if self._announced and self._notify is not None:
                self._notify(f"cellray: the GCS at {self.address} is back after {lasted:.1f} s.")
        self._announced = False
        return None
