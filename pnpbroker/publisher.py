"""The publisher stage: handled events become Event signals, in order, acknowledged by the bus.

It reads handled-but-unpublished records from the journal and emits them on the current bus link.
Every ``WINDOW`` signals (and in a quiet moment) it sends a barrier, a ``GetId`` round
trip to the bus daemon; a barrier's reply moves the journal's ``published`` cursor. At most four
barriers are outstanding, which bounds memory and keeps the socket from overflowing. If the link
dies, what was not acknowledged is sent again on the next link: subscribers drop repeats by
sequence.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Protocol

from pnpbroker.bus.wire import EVENT_SIGNATURE, event_body
from pnpbroker.journal import Journal, Record

log = logging.getLogger(__name__)

#: Signals sent as one write and acknowledged by one barrier.
WINDOW = 128
#: Windows in flight at most (the oldest is awaited before another is sent).
MAX_BARRIERS = 4
#: A quiet moment: no newly handled event for this long, so acknowledge what was sent.
QUIET_SECONDS = 0.05
#: How long handled events may wait for a window to fill while more are queued behind them.
GATHER_SECONDS = 0.01


class Link(Protocol):
    def emit_many(self, member: str, signature: str, bodies: list[list[Any]]) -> None: ...

    def barrier(self) -> asyncio.Future[Any]: ...


class LinkLost(Exception):
    """The bus link failed while signals were in flight."""


class Publisher:
    """Moves the journal's ``published`` cursor forward over whatever link is current."""

    def __init__(self, journal: Journal, on_published: Any = None) -> None:
        self.journal = journal
        self.on_published = on_published
        self._link: Link | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self.count = 0

    def attach(self, link: Link | None) -> None:
        """Use this link from now on (None: the bus is gone, wait for another)."""
        self._link = link
        self._wake.set()

    def notify(self) -> None:
        """New events were handled."""
        self._wake.set()

    def stop(self) -> None:
        """Publish what is handled, then return from :meth:`run`."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            link = self._link
            if link is None:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                idle = await self._pump(link)
            except LinkLost:
                log.warning(
                    "re-sending from sequence %d on the next bus link", self.journal.published + 1
                )
                if self._link is link:
                    self._link = None
                continue
            if idle and self._stopping:
                return
            if idle:
                self._wake.clear()
                if self.journal.published >= self.journal.handled:
                    await self._wake.wait()

    async def _pump(self, link: Link) -> bool:
        """Send everything handled; True once all of it is acknowledged.

        Each signal goes out as soon as its event is handled; the barrier that acknowledges
        them waits for a full window or a quiet moment, so a steady trickle (a legacy program
        per event) costs one write per event, not a round trip.
        """
        sent = self.journal.published
        barriers: deque[tuple[asyncio.Future[Any], int]] = deque()
        unacked = 0
        while link is self._link:
            records = await self._gather(sent)
            if not records:
                if unacked and not self._stopping and await self._more_work(QUIET_SECONDS):
                    continue
                if unacked:
                    barriers.append((link.barrier(), sent))
                    unacked = 0
                while barriers:
                    await self._settle(barriers)
                self.journal.flush()
                return True
            try:
                link.emit_many("Event", EVENT_SIGNATURE, [event_body(r) for r in records])
            except Exception as exc:
                raise LinkLost(str(exc)) from exc
            sent = records[-1].sequence
            unacked += len(records)
            if unacked >= WINDOW:
                barriers.append((link.barrier(), sent))
                unacked = 0
                while len(barriers) >= MAX_BARRIERS:
                    await self._settle(barriers)
        return False

    async def _gather(self, sent: int) -> list[Record]:
        """The next handled records; while more events are queued right behind them, let up to
        a window gather for a few milliseconds: one write wakes the bus daemon and every
        subscriber once, instead of once per event. With nothing queued, no waiting."""
        records = self.journal.between(sent, self.journal.handled, WINDOW)
        if not records:
            return records
        deadline = asyncio.get_running_loop().time() + GATHER_SECONDS
        while len(records) < WINDOW and self.journal.handled < self.journal.last:
            left = deadline - asyncio.get_running_loop().time()
            if self._stopping or left <= 0 or not await self._more_work(left):
                break
            records = self.journal.between(sent, self.journal.handled, WINDOW)
        return records

    async def _more_work(self, quiet: float) -> bool:
        """Wait up to ``quiet`` seconds for newly handled events (or a stop, or a new link)."""
        self._wake.clear()
        try:
            async with asyncio.timeout(quiet):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True

    async def _settle(self, barriers: deque[tuple[asyncio.Future[Any], int]]) -> None:
        future, through = barriers[0]
        try:
            await future
        except Exception as exc:
            for pending, _ in barriers:
                pending.cancel()
            raise LinkLost(str(exc)) from exc
        barriers.popleft()
        self.count += through - self.journal.published
        self.journal.mark_published(through)
        if self.on_published is not None:
            self.on_published(through)
