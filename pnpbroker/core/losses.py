"""Where events are lost, and the resync that follows: the reader's callbacks for a loss.

- **The kernel's buffer overflowed** (ENOBUFS): counted in ``overflows``, logged loudly, and a
  resync (:class:`pnpbroker.resync.Resync`: every device re-announced under a fresh SYNTH_UUID)
  starts at once; the loss is journalled in its place naming that UUID.
- **The journal is at its cap** (``journal_max_events``): logged loudly; the resync is held,
  since its events would be dropped too, until the backlog is published (the publish queue
  follows here); new events are accepted again once a tenth of the cap is free. A cap reached
  while a resync is under way means the journal cannot hold one: that loss names no resync
  (it would only loop), and the log says to raise the cap.
- **A recorded stream says so** (``--source`` replaying ``--output``): the loss is journalled
  again with the UUID it had; no resync starts here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from pnpbroker.journal import Journal
from pnpbroker.resync import Resync
from pnpbroker.sources import Overflow

log = logging.getLogger(__name__)


class Losses:
    """The reader's ``on_overflow``, ``on_capped`` and ``on_room``; a follower of the publish
    queue (``advance``) that starts a held resync once the backlog is published."""

    def __init__(self, journal: Journal, stats: Counter[str], receive_buffer: int) -> None:
        self.journal = journal
        self.stats = stats
        self.receive_buffer = receive_buffer
        self.resync = Resync()
        self.paused: Callable[[], bool] = lambda: False
        self._drain_to: int | None = None

    def overflow(self, overflow: Overflow) -> str:
        """The reader met a loss; the resync UUID its journal entry names."""
        if overflow.recorded is not None:
            log.warning("the stream records a loss here (resync %s)", overflow.recorded or "none")
            return overflow.recorded
        self.stats["overflows"] += 1
        uuid = self.resync.request()
        log.error(
            "KERNEL DROPPED UEVENTS: receive buffer overflow (ENOBUFS), journalled as a loss in "
            "its place; raise receive_buffer (now %d bytes); devices re-announced with "
            "SYNTH_UUID=%s",
            self.receive_buffer,
            uuid,
        )
        return uuid

    def capped(self) -> str:
        """The journal is at its cap; the resync UUID the loss names ("" if none can help)."""
        waiting = self.journal.last - self.journal.published
        if self.resync.busy:
            log.error(
                "JOURNAL AT ITS CAP during a resync: journal_max_events = %d cannot hold the "
                "re-announced devices with %d entries waiting; dropping new events, and no "
                "further resync (raise journal_max_events)",
                self.journal.max_entries,
                waiting,
            )
            return ""
        self.resync.hold()
        uuid = self.resync.request()
        log.error(
            "JOURNAL AT ITS CAP: journal_max_events = %d reached with %d entries not yet "
            "published%s; dropping new events until a tenth of it is free; devices are "
            "re-announced with SYNTH_UUID=%s once the backlog is published",
            self.journal.max_entries,
            waiting,
            " (paused)" if self.paused() else "",
            uuid,
        )
        return uuid

    def room(self) -> None:
        log.warning(
            "room in the journal again after %d dropped events; reading goes on",
            self.stats["dropped"],
        )
        self._drain_to = self.journal.last
        self.advance(self.journal.published)

    def advance(self, through: int) -> None:
        """The publish queue acknowledged up to ``through``: once that covers the backlog the
        cap left, the held resync starts."""
        if self._drain_to is not None and through >= self._drain_to:
            self._drain_to = None
            log.warning("the backlog is published; the resync starts")
            self.resync.release()
