"""The reader: drains the event source into the journal, whenever the source is readable.

It runs in the loop's ``add_reader`` callback, so a running legacy program never keeps it from
draining the kernel socket. Each batch is admitted (:func:`pnpbroker.sources.check`) and
recorded in one transaction before anything else happens to it. Rejected datagrams are counted
and logged (the first few of each kind, then one in a thousand), and so are events that give
a key twice (taken, with the first value). An overflow is journalled as a loss
(:class:`~pnpbroker.journal.Lost`) in its place: after what was read before it, with the resync
the pipeline started for it.

Two faults of the store, two answers:

- **It fails** (a full disk): reading pauses (the kernel keeps queueing in the socket's buffer)
  and the batch, kept in memory, is retried every second until it is taken; nothing is lost
  unless the kernel's buffer overflows meanwhile, which is then journalled as any overflow.
- **It is at its cap** (``journal_max_events``, while paused or far behind): what fits is kept,
  then one loss takes the last place, and new events are dropped (counted in ``dropped``) until
  a tenth of the cap is free again; then the pipeline starts the resync that loss names.

``run --dry-run`` uses this same reader with a store that prints instead of journalling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from pnpbroker.errors import ForgedSender, MalformedUevent
from pnpbroker.journal import Lost
from pnpbroker.sources import Item, Overflow, Source, check
from pnpbroker.trouble import Trouble
from pnpbroker.uevent import Uevent

log = logging.getLogger(__name__)

JOURNAL_RETRY_SECONDS = 1.0
#: Log the first N of each kind of rejected datagram, then one in every M.
_LOG_FIRST, _LOG_EVERY = 10, 1000

#: An admitted event with its datagram, or a loss (no datagram).
Accepted = tuple[Uevent | Lost, bytes]


class Store(Protocol):
    """Where admitted events go: the journal (or the dry run's printer)."""

    def append(self, items: Sequence[Uevent | Lost], raw: Sequence[bytes] | None = None) -> int:
        """Record the batch in one transaction; sqlite3.Error if it cannot."""

    def room(self, wanted: int) -> int:
        """How many of ``wanted`` new entries fit."""


class Reader:
    """Source -> checks -> store; calls back when events were recorded, lost, or it ended.

    ``on_overflow(item)`` returns the resync UUID the loss names; ``on_capped()`` the same for
    the cap's loss; ``on_room()`` says the cap's loss is over (its resync may start).
    """

    def __init__(
        self,
        source: Source,
        store: Store,
        stats: Counter[str],
        *,
        on_recorded: Callable[[], None],
        on_overflow: Callable[[Overflow], str],
        on_end: Callable[[bool], None],
        on_capped: Callable[[], str] = lambda: "",
        on_room: Callable[[], None] = lambda: None,
        resume_room: int = 1,
    ) -> None:
        self.source = source
        self.store = store
        self.stats = stats
        self.on_recorded = on_recorded
        self.on_overflow = on_overflow
        self.on_end = on_end  # True: the stream ended; False: the source failed
        self.on_capped = on_capped
        self.on_room = on_room
        self.resume_room = resume_room
        self.capped = False
        self._unrecorded: list[Accepted] = []
        self._stopped = False
        self._full = Trouble(log)
        self._batch_taken = asyncio.Event()  # each batch read: what caught_up() waits for

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.source.fileno(), self._on_readable)

    def stop(self) -> None:
        """Stop reading; what the source still holds back (:meth:`Source.flush`) is recorded."""
        if self._stopped:
            return
        self._stopped = True
        self._batch_taken.set()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.source.fileno())
        self._take(self.source.flush())

    async def caught_up(self) -> None:
        """Return once the source holds nothing to read (at once if it holds nothing now), or
        reading has stopped. While reading is paused (a failing journal) that waits too. What a
        trigger waits for between its writes (:class:`pnpbroker.resync.Pace`)."""
        while not self._stopped and _holds_something(self.source.fileno()):
            self._batch_taken.clear()
            await self._batch_taken.wait()

    def _on_readable(self) -> None:
        try:
            items = self.source.read_batch()
        except OSError as exc:
            log.error("cannot read the event source: %s; stopping", exc)
            self.stop()
            self.on_end(False)
            return
        self._take(items)
        self._batch_taken.set()
        if self.source.eof:
            self.stop()
            self.on_end(True)

    def _take(self, items: list[Item]) -> None:
        accepted: list[Accepted] = []
        for item in items:
            if isinstance(item, Overflow):
                accepted.append((Lost(self.on_overflow(item)), b""))  # after what came before
                continue
            try:
                event = check(item)
            except ForgedSender as exc:
                self._reject("forged", exc, item.where)
                continue
            except MalformedUevent as exc:
                self._reject("malformed", exc, item.where)
                continue
            if event.duplicates:
                self._duplicates(event, item.where)
            accepted.append((event, item.data))
        self._record(accepted)

    def _record(self, accepted: list[Accepted]) -> None:
        """Journal a batch; if the journal cannot take it, stop reading until it can."""
        self.stats["received"] += sum(1 for item, _ in accepted if not isinstance(item, Lost))
        pending = self._unrecorded
        if not pending and not accepted:
            return
        pending.extend(accepted)
        try:
            self._fit(pending)
            if pending:
                self.store.append([item for item, _ in pending], [raw for _, raw in pending])
        except sqlite3.Error as exc:
            self._full.failed(
                "JOURNAL NOT WRITABLE: cannot journal %d events (%s); reading paused, the kernel "
                "queues events meanwhile; retrying every %.0f s",
                len(pending),
                exc,
                JOURNAL_RETRY_SECONDS,
            )
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.source.fileno())
            loop.call_later(JOURNAL_RETRY_SECONDS, self._retry)
            return
        if pending:
            pending.clear()
            self.on_recorded()

    def advance(self, through: int) -> None:
        """The publish queue acknowledged up to ``through`` (this is one of its followers):
        published entries can make room, so a capped reader looks whether it may take events
        again, also when none are arriving."""
        if self.capped:
            with contextlib.suppress(sqlite3.Error):  # the next batch will try again
                self._uncap()

    def _uncap(self) -> bool:
        """True once the store has room again (a tenth of the cap, ``resume_room``)."""
        if self.capped and self.store.room(self.resume_room) >= self.resume_room:
            self.capped = False
            self.on_room()
        return not self.capped

    def _fit(self, pending: list[Accepted]) -> None:
        """Keep what fits under the store's cap: past it, one loss, then drop until there is
        room again (what is dropped is counted; the loss's resync covers it)."""
        if not self._uncap():
            self._drop(pending, 0)
            return
        fit = self.store.room(len(pending) + 1)  # the last place is kept for a loss
        if fit > len(pending):
            return
        self._drop(pending, max(fit - 1, 0))
        pending.append((Lost(self.on_capped()), b""))
        self.capped = True

    def _drop(self, pending: list[Accepted], keep: int) -> None:
        dropped = pending[keep:]
        del pending[keep:]
        self.stats["dropped"] += sum(1 for item, _ in dropped if not isinstance(item, Lost))

    def _retry(self) -> None:
        if self._stopped:
            return
        self._record([])
        if not self._unrecorded:
            self._full.over("journal writable again; reading resumes")
            self.start()

    def _duplicates(self, event: Uevent, where: str) -> None:
        """A real event with a key given twice: taken (the first value kept), counted, logged."""
        self.stats["duplicate_keys"] += 1
        count = self.stats["duplicate_keys"]
        if count <= _LOG_FIRST or count % _LOG_EVERY == 0:
            dropped = ", ".join(f"{key}={value!r}" for key, value in event.duplicates)
            at = f" at {where}" if where else ""
            log.warning(
                "event SEQNUM %d%s gives a key twice (%d so far): kept the first value, not %s",
                event.seqnum,
                at,
                count,
                dropped,
            )

    def _reject(self, kind: str, exc: Exception, where: str) -> None:
        key = f"rejected_{kind}"
        self.stats[key] += 1
        count = self.stats[key]
        if count <= _LOG_FIRST or count % _LOG_EVERY == 0:
            at = f" at {where}" if where else ""
            log.warning("rejected %s datagram%s (%d so far): %s", kind, at, count, exc)


def _holds_something(fd: int) -> bool:
    """Whether ``fd`` has something to read now, a datagram or an error (poll, no wait)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(events & (select.POLLIN | select.POLLERR) for _, events in poller.poll(0))
