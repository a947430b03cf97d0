"""The reader: drains the event source into the journal, whenever the source is readable.

It runs in the loop's ``add_reader`` callback, so a running legacy program never keeps it from
draining the kernel socket. Each batch is admitted (:func:`pnpbroker.sources.check`) and
recorded in one transaction before anything else happens to it. Rejected datagrams are counted
and logged (the first few of each kind, then one in a thousand), and so are events that give
a key twice (taken, with the first value); an overflow is handed up after
what was read before it is recorded; a journal that cannot take a batch pauses reading (the
kernel keeps queueing) and is retried. ``run --dry-run`` uses this same reader with a store
that prints instead of journalling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from pnpbroker.errors import ForgedSender, MalformedUevent
from pnpbroker.sources import Item, Overflow, Source, check
from pnpbroker.uevent import Uevent

log = logging.getLogger(__name__)

JOURNAL_RETRY_SECONDS = 1.0
#: Log the first N of each kind of rejected datagram, then one in every M.
_LOG_FIRST, _LOG_EVERY = 10, 1000

Accepted = tuple[Uevent, bytes]


class Store(Protocol):
    """Where admitted events go: the journal (or the dry run's printer)."""

    def append(self, events: Sequence[Uevent], raw: Sequence[bytes] | None = None) -> int: ...


class Reader:
    """Source -> checks -> store; calls back when events were recorded, lost, or it ended."""

    def __init__(
        self,
        source: Source,
        store: Store,
        stats: Counter[str],
        *,
        on_recorded: Callable[[], None],
        on_overflow: Callable[[], None],
        on_end: Callable[[bool], None],
    ) -> None:
        self.source = source
        self.store = store
        self.stats = stats
        self.on_recorded = on_recorded
        self.on_overflow = on_overflow
        self.on_end = on_end  # True: the stream ended; False: the source failed
        self._unrecorded: list[Accepted] = []
        self._stopped = False

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.source.fileno(), self._on_readable)

    def stop(self) -> None:
        """Stop reading; what the source still holds back (:meth:`Source.flush`) is recorded."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.source.fileno())
        self._take(self.source.flush())

    def _on_readable(self) -> None:
        try:
            items = self.source.read_batch()
        except OSError as exc:
            log.error("cannot read the event source: %s; stopping", exc)
            self.stop()
            self.on_end(False)
            return
        self._take(items)
        if self.source.eof:
            self.stop()
            self.on_end(True)

    def _take(self, items: list[Item]) -> None:
        accepted: list[Accepted] = []
        for item in items:
            if isinstance(item, Overflow):
                self._record(accepted)  # read before the overflow: EventsLost names what follows
                accepted = []
                self.on_overflow()
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
        self.stats["received"] += len(accepted)
        pending = self._unrecorded
        if not pending and not accepted:
            return
        pending.extend(accepted)
        try:
            self.store.append([event for event, _ in pending], [raw for _, raw in pending])
        except sqlite3.Error as exc:
            log.error(
                "cannot journal %d events (%s); pausing reading, the kernel queues meanwhile",
                len(pending),
                exc,
            )
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.source.fileno())
            loop.call_later(JOURNAL_RETRY_SECONDS, self._retry)
            return
        pending.clear()
        self.on_recorded()

    def _retry(self) -> None:
        if self._stopped:
            return
        self._record([])
        if not self._unrecorded:
            log.info("journal writable again; reading resumes")
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
