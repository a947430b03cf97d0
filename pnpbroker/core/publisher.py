"""The publish queue: handled events go out over a link, in order, as fast as it takes them.

It reads handled-but-unpublished entries (events, and losses in their place) from the journal
and sends them on the current :class:`Link` (the D-Bus server's connection; a fake one in the
unit tests). Its flow control is the link's: after each send it waits until the link has passed
on all but a little of what it holds (for the bus, until the socket took it), so nothing waits
on a round trip. Acknowledgement is rare: every ``ACK_EVERY`` events, every ``ACK_SECONDS``
while events flow, and in a quiet moment, it asks the link for a barrier; a barrier's
completion moves the journal's ``published`` cursor and tells the followers (``--output``).
At most ``MAX_BARRIERS`` are outstanding. If the link dies, what was not acknowledged is sent
again on the next one: subscribers drop repeats by sequence. Nothing here knows D-Bus: how a
record becomes a message is the link's business.

Nothing is sent past the journal's ``synced`` cursor. With ``journal_sync = "full"`` an fsync
of the journal runs in a thread while what the previous one covered is sent (one at a time,
each covering everything handled when it began).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from pnpbroker.journal import Entry, Journal

log = logging.getLogger(__name__)

#: Entries read from the journal and sent at a time (one buffer for the link).
CHUNK = 512
#: Events acknowledged by one barrier at most, and the longest a flow of events goes without one.
ACK_EVERY, ACK_SECONDS = 4096, 0.05
#: Barriers outstanding at most (the oldest is awaited before another is asked for).
MAX_BARRIERS = 2
#: A quiet moment: no newly handled event for this long, so acknowledge what was sent.
QUIET_SECONDS = 0.05
#: While more events are queued behind the handled ones (a program runs per event), handled
#: events wait up to GATHER_SECONDS for GATHER of them to go out together.
GATHER, GATHER_SECONDS = 128, 0.01


class Link(Protocol):
    """Where events are published: sends without waiting, says when it has room, and proves
    receipt with barriers."""

    def send(self, entries: list[Entry]) -> None:
        """Queue these events and losses, in order; raise if the link is broken."""

    async def drained(self) -> None:
        """Return once the link has passed on all but a little of what it holds; raise if
        it broke."""

    def barrier(self) -> asyncio.Future[Any]:
        """Resolves once everything sent before it was taken; fails if the link broke."""


class Follower(Protocol):
    """Something fed with what the link acknowledged (``--output``)."""

    def advance(self, through: int) -> None: ...


#: Barriers in flight, oldest first, each with the last sequence it acknowledges.
Barriers = deque[tuple[asyncio.Future[Any], int]]


class LinkLost(Exception):
    """The link failed while events were in flight."""


@dataclass(eq=False)
class _Flight:
    """What is in flight on one link: the last sequence sent, what was sent since the last
    barrier (and when the first of it went), the barriers outstanding, and a send that failed."""

    link: Link
    sent: int
    unacked: int = 0
    since: float = 0.0
    barriers: Barriers = field(default_factory=deque)
    failed: Exception | None = None

    def sent_now(self, records: list[Entry], now: float) -> None:
        self.sent = records[-1].sequence
        self.since = self.since if self.unacked else now
        self.unacked += len(records)

    def due(self, now: float) -> bool:
        """Time for a barrier: ACK_EVERY events sent since the last, or the first of them
        waited ACK_SECONDS."""
        return self.unacked >= ACK_EVERY or (self.unacked > 0 and now - self.since >= ACK_SECONDS)


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
        self._sync: asyncio.Future[None] | None = None
        #: The flight while the queue has sent everything and waits for more: then newly
        #: handled events are sent at once by :meth:`advance` (no task switch on the way).
        self._parked: _Flight | None = None

    @property
    def link(self) -> Link | None:
        """The current link (None while there is none)."""
        return self._link

    def attach(self, link: Link | None) -> None:
        """Use this link from now on (None: it is gone, wait for another)."""
        self._link = link
        self._wake.set()

    def advance(self, through: int) -> None:
        """Events up to ``through`` are handled (the pipeline's sink interface). While the
        queue is caught up and nothing is queued behind these, they are sent here and now
        (with ``journal_sync = "full"``, once a sync covers them: it starts here)."""
        self._start_sync()
        self._send_parked()
        self._wake.set()

    def _send_parked(self) -> None:
        """While the queue waits with everything sent, send what may be shown, at once."""
        flight, journal = self._parked, self.journal
        if flight is not None and flight.link is self._link and journal.handled == journal.last:
            records = journal.between(flight.sent, journal.synced, CHUNK)
            if records:
                try:
                    flight.link.send(records)
                except Exception as exc:  # the queue's task raises LinkLost for it
                    flight.failed = exc
                else:
                    flight.sent_now(records, asyncio.get_running_loop().time())

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
                if await self._serve(link):
                    return
            except LinkLost:
                log.warning(
                    "re-sending from sequence %d on the next link", self.journal.published + 1
                )
                if self._link is link:
                    self._link = None

    async def _serve(self, link: Link) -> bool:
        """Publish over ``link`` while it is the current one; True once stopped."""
        flight = _Flight(link, self.journal.published)
        while True:
            done = await self._pump(flight)
            if self._link is not link:
                return False
            if done and self._stopping:
                return True
            await self._idle(flight)

    async def _idle(self, flight: _Flight) -> None:
        """Everything is acknowledged: wait for more (sent at once by ``advance``)."""
        self._wake.clear()
        if self.journal.published < self.journal.handled:
            return
        self._parked = flight
        try:
            await self._wake.wait()
        finally:
            self._parked = None

    async def _pump(self, flight: _Flight) -> bool:
        """Send everything handled (and synced); True once all of it is acknowledged."""
        clock = asyncio.get_running_loop().time
        while flight.link is self._link:
            _check(flight)
            records = await self._gather(flight.sent)
            if records:
                await _send(flight.link, records)
                flight.sent_now(records, clock())
            if flight.due(clock()):
                self._barrier(flight)
                await self._settle(flight.barriers, MAX_BARRIERS - 1)
            if records:
                continue
            self._parked = flight
            try:
                quiet = await self._quiet(flight.unacked)
            finally:
                self._parked = None
            _check(flight)
            if quiet:
                if flight.unacked:
                    self._barrier(flight)
                await self._settle(flight.barriers, 0)
                self._flush()
                return True
        return False

    def _barrier(self, flight: _Flight) -> None:
        flight.barriers.append((flight.link.barrier(), flight.sent))
        flight.unacked = 0

    def _flush(self) -> None:
        """Save the cursors; if the journal cannot take them now, housekeeping tries again."""
        try:
            self.journal.flush()
        except sqlite3.Error as exc:
            log.debug("cursors not saved yet: %s", exc)

    def _visible(self, sent: int, limit: int) -> list[Entry]:
        """The next entries that may be shown (handled and synced); starts a sync of what is
        handled and not synced yet (it wakes the queue when done)."""
        syncing = self._sync
        if syncing is not None and syncing.done():
            self._sync = None
            syncing.result()  # an fsync that failed stops the queue (and the broker: exit 111)
        self._start_sync()
        return self.journal.between(sent, self.journal.synced, limit)

    def _start_sync(self) -> None:
        """Start a sync of what is handled and not synced yet, unless one runs (or ended and
        the queue has not looked at it yet); it wakes the queue when done."""
        if self.journal.handled > self.journal.synced and self._sync is None:
            self._sync = asyncio.ensure_future(self.journal.sync())
            self._sync.add_done_callback(lambda _: self._wake.set())

    async def _gather(self, sent: int) -> list[Entry]:
        """The next records to send; while more events are queued right behind them (a
        program per event), let up to GATHER of them gather for a few milliseconds: one write
        wakes the bus daemon and every subscriber once, instead of once per event. With
        nothing queued, no waiting."""
        records = self._visible(sent, CHUNK)
        if not records or len(records) >= GATHER:
            return records
        deadline = asyncio.get_running_loop().time() + GATHER_SECONDS
        while len(records) < GATHER and self.journal.handled < self.journal.last:
            left = deadline - asyncio.get_running_loop().time()
            if self._stopping or left <= 0 or not await self._more_work(left):
                break
            records = self._visible(sent, CHUNK)
        return records

    async def _quiet(self, unacked: int) -> bool:
        """Nothing left to send: True unless more is handled (or synced) within a quiet
        moment (with ``unacked`` events sent, it is worth waiting that long before a
        barrier; with a sync running, it is waited for)."""
        syncing = self._sync is not None and not self._sync.done()
        if not (unacked or syncing) or (self._stopping and not syncing):
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


def _check(flight: _Flight) -> None:
    """LinkLost if a send made outside the queue's task failed."""
    if flight.failed is not None:
        raise LinkLost(str(flight.failed)) from flight.failed


async def _send(link: Link, records: list[Entry]) -> None:
    """Send, then wait until the link has room (and let the loop have a turn)."""
    try:
        link.send(records)
        await link.drained()
    except Exception as exc:
        raise LinkLost(str(exc)) from exc
    if len(records) >= CHUNK:
        await asyncio.sleep(0)  # a long backlog must not keep the reader from the kernel
