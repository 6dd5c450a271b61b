"""A driver's or worker's side of its GCS connection, for ``CoreClient``.

- ``connect_gcs``: the ``GcsClient`` of a driver (fails at once where no GCS ever answered:
  there is no cluster there; tells the person at it, once per outage, that a call waits
  for the GCS, "GCS reconnecting…", and when it is back) or of a worker (waits for a GCS
  that restarts). Either fails a call that waits for the GCS at once, with an error that
  says why, once the head reports that it left the GCS stopped because its storage is
  unreachable (``runtime.cluster.supervision.storage_lost``, from the session directory
  when the head runs on this machine).
- ``set_user_notifier``: where a driver's lines for people go (default: stderr); the
  notebook extension writes them into the cell that waits (``kernel_ext.routing``).
- ``Exports``: which functions this process exported, once per connection: after the
  GCS came back from an outage each is exported again once, in case it lost the last
  exports before it died (a durable GCS keeps the rest; it answers "existed").
- ``timed_out``: the error of a blocking call cancelled at its deadline, which names a GCS
  outage under way when there is one.
- ``recheck_cluster``: after the session to the node broke, ask the GCS who it is: when it
  came back as another cluster (the node left it), the client's ``on_new_cluster`` hears
  of it, and the driver raises that error rather than the broken stream's.

Through a GCS outage the session to the node goes on (tasks, actor calls and objects need
no GCS); calls that need it (exporting a new function, naming an actor, ``rt.state``) wait
for it to come back, up to ``gcs_outage_timeout_s`` (``runtime.gcs.client``).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import sys
from collections.abc import Callable

from runtime.config import Settings
from runtime.exceptions import RpcTimeoutError
from runtime.gcs.client import GcsClient, NewClusterHook

__all__ = ["Exports", "connect_gcs", "recheck_cluster", "set_user_notifier", "timed_out"]

logger = logging.getLogger(__name__)

#: Where a driver's lines for people go instead of stderr (``set_user_notifier``).
_notifier: Callable[[str], bool] | None = None


def set_user_notifier(notifier: Callable[[str], bool] | None) -> None:
    """Send the lines a driver has for people ("GCS reconnecting…" when a call starts to
    wait for the GCS, and that it is back) to ``notifier`` instead of stderr; None: stderr.

    It runs on the connection's IO thread and returns whether someone was told: False
    (a notebook with no cell running) lets the next call that waits tell again.
    """
    global _notifier
    _notifier = notifier


def _tell_user(line: str) -> bool:
    """A line for the person at a driver (a script's console, the waiting notebook cell)."""
    notifier = _notifier
    if notifier is not None:
        return notifier(line)
    print(line, file=sys.stderr, flush=True)
    return True


def _head_verdict(session_dir: str, since: float) -> str | None:
    """Why the head left the GCS stopped for good after ``since``, from its report in
    ``session_dir`` (found when the head runs on this machine), or None."""
    from runtime.cluster.supervision import storage_lost  # the head's side: imported when needed

    return storage_lost(pathlib.Path(session_dir), since)


def connect_gcs(address: str, token: str, settings: Settings, *, driver: bool,
                on_new_cluster: NewClusterHook) -> GcsClient:
    """The GCS client of a driver (``driver``) or a worker; create it on the IO loop."""
    gcs = GcsClient.from_settings(address, token, settings, wait_for_first_contact=not driver,
                                  on_new_cluster=on_new_cluster, notify=_tell_user if driver else None)
    gcs.link.head_verdict = _head_verdict
    return gcs


class Exports:
    """Function ids exported through one ``GcsClient``, forgotten when it reconnects."""

    def __init__(self) -> None:
        self._done: set[bytes] = set()
        #: ``gcs.link.connections`` when ``_done`` was last cleared.
        self._over = 0

    def needed(self, gcs: GcsClient, function_id: bytes) -> bool:
        """Whether ``function_id`` must be exported (again) through ``gcs``."""
        if self._over != gcs.link.connections:
            self._over = gcs.link.connections
            self._done.clear()
        return function_id not in self._done

    def done(self, function_id: bytes) -> None:
        self._done.add(function_id)


def timed_out(what: str, timeout: float, gcs: GcsClient | None, where: str,
              session_dir: str) -> RpcTimeoutError:
    """The error of ``what``, cancelled after ``timeout`` seconds, on the cluster at ``where``."""
    if gcs is not None and gcs.link.outage.since is not None:
        return RpcTimeoutError(
            f"{what} did not finish within {timeout:g} s and was cancelled: the GCS at {gcs.address} "
            f"has been unreachable for {gcs.link.outage.lasted():.1f} s. Work already running goes "
            "on; a supervised head restarts its GCS within seconds. If it stays away, see "
            f"{session_dir or 'the session directory'}/logs/gcs.log.", timeout=timeout)
    return RpcTimeoutError(
        f"{what} did not finish within {timeout:g} s and was cancelled: the cluster at {where} is "
        "overloaded or unreachable. Retry; if it is only slow, raise CELLRAY_RPC_TIMEOUT_S (or the "
        "other *_TIMEOUT_S settings).", timeout=timeout)


async def recheck_cluster(gcs: GcsClient, timeout: float) -> None:
    """Ping the GCS (for at most ``timeout`` seconds) to learn whether it is another cluster
    now; whatever the answer, nothing is raised here."""
    if gcs.link.new_cluster is not None:
        return
    try:
        await asyncio.wait_for(gcs.ping(), timeout)
    except Exception as e:  # noqa: BLE001 - any answer or none: the caller's error stays
        logger.debug("checking the GCS at %s: %s", gcs.address, e)
