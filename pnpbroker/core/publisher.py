"""The publish queue: handled events go out over a link, in order, acknowledged in windows.

It reads handled-but-unpublished entries (events, and losses in their place) from the journal
and sends them on the current
:class:`Link` (the D-Bus server's connection; a fake one in the unit tests). Every ``WINDOW``
events (and in a quiet moment) it asks the link for a barrier; a barrier's completion moves the
journal's ``published`` cursor and tells the followers (``--output``). At most ``MAX_BARRIERS``
barriers are outstanding, which bounds memory and keeps the link from being flooded. If the link
dies, what was not acknowledged is sent again on the next one: subscribers drop repeats by
sequence. Nothing here knows D-Bus: how a record becomes a message is the link's business.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from typing import Any, Protocol

from pnpbroker.journal import Entry, Journal

log = logging.getLogger(__name__)

#: Events sent as one batch and acknowledged by one barrier.
WINDOW = 128
#: Windows in flight at most (the oldest is awaited before another is sent).
MAX_BARRIERS = 4
#: A quiet moment: no newly handled event for this long, so acknowledge what was sent.
QUIET_SECONDS = 0.05
#: How long handled events may wait for a window to fill while more are queued behind them.
GATHER_SECONDS = 0.01


class Link(Protocol):
    """Where events are published: sends without waiting, and proves receipt with barriers."""

    def send(self, entries: list[Entry]) -> None:
        """Queue these events and losses, in order; raise if the link is broken."""

    def barrier(self) -> asyncio.Future[Any]:
        """Resolves once everything sent before it was taken; fails if the link broke."""


class Follower(Protocol):
    """Something fed with what the link acknowledged (``--output``)."""

    def advance(self, through: int) -> None: ...


#: Barriers in flight, oldest first, each with the last sequence it acknowledges.
Barriers = deque[tuple[asyncio.Future[Any], int]]


class LinkLost(Exception):
    """The link failed while events were in flight."""


class Publisher:
    """Moves the journal's ``published`` cursor forward over whatever link is current."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.followers: list[Follower] = []
        #: Set whenever the ``published`` cursor moves.
        self.acked = asyncio.Event()
        self.count = 0
        self._link: Link | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def link(self) -> Link | None:
        """The current link (None while there is none)."""
        return self._link

    def attach(self, link: Link | None) -> None:
        """Use this link from now on (None: it is gone, wait for another)."""
        self._link = link
        self._wake.set()

    def advance(self, through: int) -> None:
        """Events up to ``through`` are handled (the pipeline's sink interface)."""
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
                    "re-sending from sequence %d on the next link", self.journal.published + 1
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

        Each event goes out as soon as it is handled; the barrier that acknowledges it waits
        for a full window or a quiet moment, so a steady trickle (a legacy program per event)
        costs one write per event, not a round trip.
        """
        sent = self.journal.published
        barriers: Barriers = deque()
        unacked = 0
        while link is self._link:
            records = await self._gather(sent)
            if records:
                if records[-1].sequence > self.journal.synced:
                    await self.journal.sync()  # nothing reaches a client before it is on disk
                _send(link, records)
                sent = records[-1].sequence
                unacked += len(records)
                if unacked >= WINDOW:
                    barriers.append((link.barrier(), sent))
                    unacked = 0
                    await self._settle(barriers, MAX_BARRIERS - 1)
            elif await self._quiet(unacked):
                if unacked:
                    barriers.append((link.barrier(), sent))
                await self._settle(barriers, 0)
                self._flush()
                return True
        return False

    def _flush(self) -> None:
        """Save the cursors; if the journal cannot take them now, housekeeping tries again."""
        try:
            self.journal.flush()
        except sqlite3.Error as exc:
            log.debug("cursors not saved yet: %s", exc)

    async def _gather(self, sent: int) -> list[Entry]:
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

    async def _quiet(self, unacked: int) -> bool:
        """Nothing left to send: True unless more is handled within a quiet moment (with
        ``unacked`` events sent, it is worth waiting that long before a barrier)."""
        if not unacked or self._stopping:
            return True
        return not await self._more_work(QUIET_SECONDS)

    async def _more_work(self, quiet: float) -> bool:
        """Wait up to ``quiet`` seconds for newly handled events (or a stop, or a new link)."""
        self._wake.clear()
        try:
            async with asyncio.timeout(quiet):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True

    async def _settle(self, barriers: Barriers, outstanding: int) -> None:
        """Wait for the oldest barriers until at most ``outstanding`` remain."""
        while len(barriers) > outstanding:
            future, through = barriers[0]
            try:
                await future
            except Exception as exc:
                for pending, _ in barriers:
                    pending.cancel()
                raise LinkLost(str(exc)) from exc
            barriers.popleft()
            self._acknowledged(through)

    def _acknowledged(self, through: int) -> None:
        self.count += through - self.journal.published
        self.journal.mark_published(through)
        self.acked.set()
        for follower in self.followers:
            follower.advance(through)


def _send(link: Link, records: list[Entry]) -> None:
    try:
        link.send(records)
    except Exception as exc:
        raise LinkLost(str(exc)) from exc
