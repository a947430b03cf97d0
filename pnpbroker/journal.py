"""The durable queue: every event read is recorded here, with its sequence, before anything runs.

SQLite in WAL mode (:mod:`pnpbroker.journalfile` opens the file: schema, identity, durability,
a damaged file moved aside). The journal assigns the public ``sequence`` (1, 2, 3, ...;
AUTOINCREMENT keeps it from being reused even after retention deleted every row) to each
*entry*: an event, or a loss (:class:`Lost`: the kernel dropped events, the journal reached its
cap, or it was replaced), which takes its place in the stream like an event. Two cursors say how
far the serial stages got: ``handled`` (the legacy program finished, its outcome stored) and
``published`` (the bus daemon acknowledged the signal). After a crash, what lies past a cursor is
done again. An event's outcome is stored as JSON in the ``handler`` column (the name of the
Event signal's argument that carries it): ``{}`` when nothing ran, NULL until it is handled.

The journal holds at most ``max_entries`` entries (``journal_max_events``; 0: no cap): the
oldest published ones make room first; what still does not fit is the reader's to drop.

A third cursor, ``synced``, says how far the journal is on disk (``journal_sync = "full"``):
nothing past it is shown to clients (see :mod:`pnpbroker.journalfile`). A fourth, ``forwarded``,
is the fleet forwarder's: its MQTT broker acknowledged everything up to it (docs/fleet.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from pnpbroker.journalfile import mark_closed, open_file
from pnpbroker.outcome import Outcome
from pnpbroker.uevent import Uevent, parse, serialize

#: Unpublished records kept in memory so the stages do not read back what was just written
#: (empty when the broker keeps up; a longer backlog is read back from SQLite).
TAIL_SIZE = 16384


@dataclass(frozen=True, slots=True)
class Record:
    """A journalled event: its sequence, the event, and its outcome once handled (None when
    nothing ran, or not yet)."""

    sequence: int
    event: Uevent
    outcome: Outcome | None
    received: float = 0.0  # when the broker read it (seconds since the epoch)


@dataclass(frozen=True, slots=True)
class Lost:
    """A loss, in its place in the stream: events are missing here. ``resync_uuid`` is the
    SYNTH_UUID of the coldplug that re-announces the devices ("" if none was started);
    ``sequence`` is its place once journalled (0 before)."""

    resync_uuid: str
    sequence: int = 0


#: What the journal holds at each sequence.
Entry = Record | Lost


def entry(
    sequence: int, raw: bytes, stored: str | None, lost: str | None, received: float = 0.0
) -> Entry:
    """An entry from its row (``seq, uevent, handler, lost``, and ``received`` if selected)."""
    if lost is not None:
        return Lost(lost, sequence)
    return Record(sequence, parse(raw), _outcome(stored), received)


class Journal:
    """The event store shared by the reader, the sequencer, the publisher and GetEvents."""

    def __init__(
        self,
        path: Path,
        max_events: int = 100_000,
        max_age: float = 7 * 86400,
        *,
        max_entries: int = 0,
        sync: str = "full",
    ) -> None:
        self.path = path
        self.max_events = max_events
        self.max_age = max_age
        self.max_entries = max_entries
        self._db, self.replaced = open_file(path, sync)
        self.journal_id = self._text("SELECT value FROM meta WHERE key='journal_id'")
        self.last = self._scalar("SELECT seq FROM sqlite_sequence WHERE name='events'")
        # The handled cursor row is saved lazily; each outcome is durable in its own row.
        self.handled = max(
            self._cursor("handled"),
            self._scalar("SELECT MAX(seq) FROM events WHERE handler IS NOT NULL"),
        )
        self.published = self._cursor("published")
        self.forwarded = self._cursor("forwarded")
        #: Whether a fleet forwarder is configured: then age alone does not prune what it has not
        #: taken (the count limit and the cap still do: a forwarder far behind gets a reported
        #: loss).
        self.holds_for_forwarder = False
        self._wal: int | None = None
        if sync == "full":  # what a crashed run left in the page cache goes to disk first
            self._wal = os.open(f"{path}-wal", os.O_RDONLY | os.O_CLOEXEC)
            os.fsync(self._wal)
        self._synced = self.handled
        self._dirty = False
        self._tail: deque[Entry] = deque()
        if self.replaced is not None:  # the fresh journal begins by saying what happened
            self.append([Lost("")])

    def _text(self, sql: str) -> str:
        row = self._db.execute(sql).fetchone()
        return str(row[0]) if row else ""

    def _scalar(self, sql: str, *args: object) -> int:
        row = self._db.execute(sql, args).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _cursor(self, name: str) -> int:
        return self._scalar("SELECT seq FROM cursors WHERE name=?", name)

    @property
    def oldest(self) -> int:
        """The oldest sequence still held (0 when empty)."""
        return self._scalar("SELECT MIN(seq) FROM events")

    @property
    def count(self) -> int:
        """How many entries it holds."""
        oldest = self.oldest
        return self.last - oldest + 1 if oldest else 0

    def room(self, wanted: int) -> int:
        """How many of ``wanted`` new entries fit under the cap (all of them with no cap);
        the oldest published entries go first to make room."""
        if not self.max_entries:
            return wanted
        free = self.max_entries - self.count
        if free < wanted:
            oldest = self.oldest
            through = min(self.published, oldest + wanted - free - 1)
            if through >= oldest > 0:
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.execute("DELETE FROM events WHERE seq <= ?", (through,))
                free = self.max_entries - self.count
        return max(0, min(wanted, free))

    def append(self, items: Sequence[Uevent | Lost], raw: Sequence[bytes] | None = None) -> int:
        """Record a batch of events and losses in one transaction; return the last sequence.

        ``raw`` are the datagrams the events were parsed from, stored as they are (else the
        events are serialized again; a loss has none).
        """
        now = time.time()
        first = self.last + 1
        blobs = raw if raw is not None else [_blob(item) for item in items]
        rows = [
            _row(first + i, item, blob, now)
            for i, (item, blob) in enumerate(zip(items, blobs, strict=True))
        ]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, NULL, ?)", rows)
        tail = self._tail
        tail.extend(_fresh(first + i, item, now) for i, item in enumerate(items))
        while len(tail) > TAIL_SIZE:
            tail.popleft()
        self.last += len(rows)
        return self.last

    def _range(self, after: int, through: int, limit: int) -> list[Entry] | None:
        """Records after..through (at most ``limit``) from memory, or None if not all there."""
        through = min(through, after + limit)
        if through <= after:
            return []
        tail = self._tail
        if not tail or after + 1 < tail[0].sequence or through > tail[-1].sequence:
            return None
        start = after + 1 - tail[0].sequence
        return list(islice(tail, start, start + through - after))

    def _records(self, sql: str, *args: object) -> list[Entry]:
        return [entry(*row) for row in self._db.execute(sql, args)]

    def unhandled(self, limit: int) -> list[Entry]:
        """The next entries whose program has not finished (or that are not handled yet),
        oldest first."""
        cached = self._range(self.handled, self.last, limit)
        if cached is not None:
            return cached
        return self._records(
            "SELECT seq, uevent, NULL, lost, received FROM events WHERE seq > ? ORDER BY seq "
            "LIMIT ?",
            self.handled,
            limit,
        )

    def record_outcome(self, sequence: int, outcome: Outcome | None) -> None:
        """Store one entry's outcome (None for a loss, or when nothing ran), durably: one row,
        one commit (the cursor follows lazily; reopening finds the last outcome stored).
        sqlite3.Error if it cannot be stored (a full disk): nothing changed then."""
        stored = json.dumps(outcome.to_json() if outcome is not None else {})
        self._db.execute("UPDATE events SET handler=? WHERE seq=?", (stored, sequence))
        self.handled = sequence
        self._dirty = True
        tail = self._tail
        if tail and 0 <= (index := sequence - tail[0].sequence) < len(tail):
            cached = tail[index]
            if isinstance(cached, Record):
                tail[index] = Record(sequence, cached.event, outcome, cached.received)

    @property
    def synced(self) -> int:
        """What may be shown to clients: with ``journal_sync = "full"``, what was handled when
        the last :meth:`sync` began; else everything handled."""
        return self._synced if self._wal is not None else self.handled

    async def sync(self) -> None:
        """Put every commit so far on disk (an fsync of the WAL, in a thread: the loop goes
        on), then move ``synced`` to what was handled before it began."""
        through = self.handled
        if self._wal is not None and through > self._synced:
            await asyncio.to_thread(os.fsync, self._wal)
        self._synced = max(self._synced, through)

    def skip_handling(self, through: int) -> None:
        """No program runs: everything up to ``through`` counts as handled (saved lazily)."""
        self.handled = max(self.handled, through)
        self._dirty = True

    def between(self, after: int, through: int, limit: int) -> list[Entry]:
        """Entries with ``after < sequence <= through``, oldest first, at most ``limit``.

        Callers bound it by a cursor: the publisher and GetEvents by ``handled`` (final: the
        program's outcome is stored; every signal a client may have seen is there, also after a
        crash), ``--output`` by ``published``. Recent records come from memory.
        """
        cached = self._range(after, through, limit)
        if cached is not None:
            return cached
        return self._records(
            "SELECT seq, uevent, handler, lost, received FROM events WHERE seq > ? AND seq <= ? "
            "ORDER BY seq LIMIT ?",
            after,
            through,
            limit,
        )

    def mark_published(self, through: int) -> None:
        """The bus acknowledged everything up to ``through`` (saved by :meth:`flush`)."""
        if through > self.published:
            self.published = through
            self._dirty = True
        self._trim_tail()

    def mark_forwarded(self, through: int) -> None:
        """The fleet forwarder's MQTT broker acknowledged everything up to ``through`` (saved by
        :meth:`flush`)."""
        if through > self.forwarded:
            self.forwarded = through
            self._dirty = True
        self._trim_tail()

    def _trim_tail(self) -> None:
        """Drop from memory what every stage is done with."""
        done, tail = min(self.published, self._forwarder_needs()), self._tail
        while tail and tail[0].sequence <= done:
            tail.popleft()

    def _forwarder_needs(self) -> int:
        """The last sequence the forwarder no longer needs (everything, without one)."""
        return self.forwarded if self.holds_for_forwarder else self.last

    def flush(self) -> None:
        """Save the lazily kept cursors; losing them only means doing a little work again."""
        if not self._dirty:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO cursors VALUES (?, ?)",
                [
                    ("handled", self.handled),
                    ("published", self.published),
                    ("forwarded", self.forwarded),
                ],
            )
        self._dirty = False

    def prune(self) -> int:
        """Apply retention to published events only; return how many rows went.

        ``max_age`` spares what the forwarder has not taken; ``max_events`` does not (a forwarder
        far behind then finds its next events gone, and reports the loss)."""
        keep_from = self.published - self.max_events
        aged_through = min(self.published, self._forwarder_needs())
        cutoff = time.time() - self.max_age
        with self._db:
            self._db.execute("BEGIN")
            cur = self._db.execute(
                "DELETE FROM events WHERE seq <= ? AND (seq <= ? OR (seq <= ? AND received < ?))",
                (self.published, keep_from, aged_through, cutoff),
            )
        return cur.rowcount

    def close(self) -> None:
        """Save the cursors and mark the journal closed (a clean stop)."""
        try:
            self.flush()
            mark_closed(self._db)
        finally:
            self._db.close()
            if self._wal is not None:
                os.close(self._wal)
                self._wal = None


def _blob(item: Uevent | Lost) -> bytes:
    return b"" if isinstance(item, Lost) else serialize(item)


def _row(sequence: int, item: Uevent | Lost, blob: bytes, now: float) -> tuple[object, ...]:
    if isinstance(item, Lost):
        return (sequence, 0, now, b"", item.resync_uuid)
    return (sequence, item.seqnum, now, blob, None)


def _fresh(sequence: int, item: Uevent | Lost, now: float) -> Entry:
    if isinstance(item, Lost):
        return Lost(item.resync_uuid, sequence)
    return Record(sequence, item, None, now)


def _outcome(stored: str | None) -> Outcome | None:
    return None if stored is None else Outcome.from_json(json.loads(stored))
