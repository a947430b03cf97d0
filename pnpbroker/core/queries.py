"""GetEvents and GetEvents2, off the event loop: what clients read of the journal.

Any user may read the journal, and a page is thousands of rows. The reads go to one worker
thread with a second, read-only SQLite connection (WAL lets it read while the pipeline writes),
so the loop that drains the kernel, runs programs and publishes is held up by a GIL switch, not
by a client's page. Requests wait their turn in that one thread (first come, first served);
each is bounded: at most ``limit`` events returned and, with a filter, at most ``SCAN`` entries
looked at (the reply says how far it got). All readers together get ``ROWS_PER_SECOND``
rows (a token bucket: a read takes the most it may look at before it starts, and gives back
what it did not use): past it a request waits its turn, so however many clients read in a
loop, most of the broker's time stays the pipeline's.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pnpbroker.client.model import Filter
from pnpbroker.errors import NoLongerJournalled
from pnpbroker.journal import Entry, Lost, Record, entry
from pnpbroker.uevent import Uevent

#: The most entries one filtered read looks at.
SCAN = 16384
#: Rows looked at per second by all readers together (reading, decoding and marshalling a row
#: costs about 8 us here: this is about a quarter of a core), and the burst allowed.
ROWS_PER_SECOND, ROWS_BURST = 32768.0, 8192.0
T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    """What one filtered read found: the matching events and every loss (a loss concerns every
    reader) after ``after``, oldest first, and ``through``: every entry up to it was looked at."""

    events: list[Record]
    lost: list[Lost]
    through: int


class Budget:
    """A token bucket of rows: a read takes its most before it starts (waiting while the
    bucket is in debt), and gives back what it did not use."""

    def __init__(self, rate: float = ROWS_PER_SECOND, burst: float = ROWS_BURST) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, rows: int) -> None:
        self._refill()
        while self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)
            self._refill()
        self.tokens -= rows

    def give_back(self, rows: int) -> None:
        self._refill()
        self.tokens = min(self.burst, self.tokens + rows)


class Queries:
    """Reads of the journal at ``path`` in one worker thread, within a :class:`Budget`."""

    def __init__(self, path: Path, budget: Budget | None = None) -> None:
        self.path = path
        self.budget = budget or Budget()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="journal-reads")
        self._db: sqlite3.Connection | None = None

    async def events(self, after: int, through: int, limit: int) -> list[Record]:
        """The events (not the losses) with ``after < sequence <= through``, at most ``limit``."""
        await self.budget.take(limit)
        entries = await self._run(self._read, after, through, limit)
        self.budget.give_back(limit - len(entries))
        return [e for e in entries if isinstance(e, Record)]

    async def page(self, after: int, through: int, limit: int, wanted: Filter) -> Page:
        """Up to ``limit`` matching events after ``after``, looking at most ``SCAN`` entries."""
        await self.budget.take(SCAN)
        try:
            found = await self._run(self._page, after, through, limit, wanted)
        except BaseException:
            self.budget.give_back(SCAN)
            raise
        self.budget.give_back(SCAN - (found.through - after))
        return found

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            uri = f"{self.path.absolute().as_uri()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return self._db

    def _read(self, after: int, through: int, limit: int) -> list[Entry]:
        rows = self._connection().execute(
            "SELECT seq, uevent, handler, lost FROM events WHERE seq > ? AND seq <= ? "
            "ORDER BY seq LIMIT ?",
            (after, through, limit),
        )
        return [entry(*row) for row in rows]

    def _page(self, after: int, through: int, limit: int, wanted: Filter) -> Page:
        events: list[Record] = []
        lost: list[Lost] = []
        seen = after
        while seen < through and len(events) < limit and seen - after < SCAN:
            entries = self._read(seen, min(through, after + SCAN), 1024)
            if not entries or entries[0].sequence != seen + 1:
                oldest = entries[0].sequence if entries else 0
                raise NoLongerJournalled(seen + 1, oldest)
            for found in entries:
                if isinstance(found, Lost):
                    lost.append(found)
                elif _matches(wanted, found.event):
                    events.append(found)
                seen = found.sequence
                if len(events) >= limit:
                    break
        return Page(events, lost, seen)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._db is not None:
            self._db.close()
            self._db = None


def _matches(wanted: Filter, event: Uevent) -> bool:
    return wanted.matches(event.action, event.subsystem, event.devpath, event.properties)
