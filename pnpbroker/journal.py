"""The durable queue: every event read is recorded here, with its sequence, before anything runs.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed transaction survives SIGKILL of the
broker. The journal assigns the public ``sequence`` (1, 2, 3, ...; AUTOINCREMENT keeps it from
being reused even after retention deleted every row). Two cursors say how far the serial stages
got: ``handled`` (the legacy program finished, its outcome stored) and ``published`` (the bus
daemon acknowledged the signal); a third, ``forwarded``, is the fleet forwarder's (its MQTT
broker acknowledged the message: docs/fleet.md). After a crash, what lies past a cursor is done
again.
An event's outcome is stored as JSON in the ``handler`` column (the name of the Event signal's
argument that carries it): ``{}`` when nothing ran, NULL until the event is handled.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from pnpbroker.outcome import Outcome
from pnpbroker.uevent import Uevent, parse, serialize

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    seqnum   INTEGER NOT NULL,
    received REAL NOT NULL,
    uevent   BLOB NOT NULL,
    handler  TEXT
);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL
);
INSERT OR IGNORE INTO cursors VALUES ('handled', 0), ('published', 0), ('forwarded', 0);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

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


class Journal:
    """The event store shared by the reader, the sequencer, the publisher and GetEvents."""

    def __init__(self, path: Path, max_events: int = 100_000, max_age: float = 7 * 86400) -> None:
        self.path = path
        self.max_events = max_events
        self.max_age = max_age
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.last = self._scalar("SELECT seq FROM sqlite_sequence WHERE name='events'")
        # The handled cursor row is saved lazily; each outcome is durable in its own row.
        self.handled = max(
            self._cursor("handled"),
            self._scalar("SELECT MAX(seq) FROM events WHERE handler IS NOT NULL"),
        )
        self.published = self._cursor("published")
        self.forwarded = self._cursor("forwarded")
        #: Whether a fleet forwarder is configured: then age alone does not prune what it has not
        #: taken (the count limit still does: a forwarder far behind gets a reported loss).
        self.holds_for_forwarder = False
        self.id = self._journal_id()
        self._dirty = False
        self._tail: deque[Record] = deque()

    def _scalar(self, sql: str, *args: object) -> int:
        row = self._db.execute(sql, args).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _cursor(self, name: str) -> int:
        return self._scalar("SELECT seq FROM cursors WHERE name=?", name)

    def _journal_id(self) -> str:
        """This journal's UUID, made when the journal is created (the same for its life)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('journal_id', ?)", (str(uuid.uuid4()),)
            )
        row = self._db.execute("SELECT value FROM meta WHERE key='journal_id'").fetchone()
        return str(row[0])

    @property
    def oldest(self) -> int:
        """The oldest sequence still held (0 when empty)."""
        return self._scalar("SELECT MIN(seq) FROM events")

    def append(self, events: Sequence[Uevent], raw: Sequence[bytes] | None = None) -> int:
        """Record a batch in one transaction; return the sequence of the last one.

        ``raw`` are the datagrams the events were parsed from, stored as they are (else the
        events are serialized again).
        """
        now = time.time()
        first = self.last + 1
        blobs = raw if raw is not None else [serialize(e) for e in events]
        rows = [
            (first + i, e.seqnum, now, blob)
            for i, (e, blob) in enumerate(zip(events, blobs, strict=True))
        ]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, NULL)", rows)
        tail = self._tail
        tail.extend(Record(first + i, e, None, now) for i, e in enumerate(events))
        while len(tail) > TAIL_SIZE:
            tail.popleft()
        self.last += len(rows)
        return self.last

    def _range(self, after: int, through: int, limit: int) -> list[Record] | None:
        """Records after..through (at most ``limit``) from memory, or None if not all there."""
        through = min(through, after + limit)
        if through <= after:
            return []
        tail = self._tail
        if not tail or after + 1 < tail[0].sequence or through > tail[-1].sequence:
            return None
        start = after + 1 - tail[0].sequence
        return list(islice(tail, start, start + through - after))

    def _records(self, sql: str, *args: object) -> list[Record]:
        return [
            Record(seq, parse(raw), _outcome(stored), received)
            for seq, raw, stored, received in self._db.execute(sql, args)
        ]

    def unhandled(self, limit: int) -> list[Record]:
        """The next events whose program has not finished, oldest first."""
        cached = self._range(self.handled, self.last, limit)
        if cached is not None:
            return cached
        return self._records(
            "SELECT seq, uevent, NULL, received FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            self.handled,
            limit,
        )

    def record_outcome(self, sequence: int, outcome: Outcome | None) -> None:
        """Store one event's outcome, durably: one row, one commit (the cursor follows lazily;
        reopening finds the last outcome stored)."""
        stored = json.dumps(outcome.to_json() if outcome is not None else {})
        self._db.execute("UPDATE events SET handler=? WHERE seq=?", (stored, sequence))
        self.handled = sequence
        self._dirty = True
        tail = self._tail
        if tail and 0 <= (index := sequence - tail[0].sequence) < len(tail):
            old = tail[index]
            tail[index] = Record(sequence, old.event, outcome, old.received)

    def skip_handling(self, through: int) -> None:
        """No program runs: everything up to ``through`` counts as handled (saved lazily)."""
        self.handled = max(self.handled, through)
        self._dirty = True

    def between(self, after: int, through: int, limit: int) -> list[Record]:
        """Records with ``after < sequence <= through``, oldest first, at most ``limit``.

        Callers bound it by a cursor: the publisher and GetEvents by ``handled`` (final: the
        program's outcome is stored; every signal a client may have seen is there, also after a
        crash), ``--output`` by ``published``. Recent records come from memory.
        """
        cached = self._range(after, through, limit)
        if cached is not None:
            return cached
        return self._records(
            "SELECT seq, uevent, handler, received FROM events WHERE seq > ? AND seq <= ? "
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
                "UPDATE cursors SET seq=? WHERE name=?",
                [
                    (self.handled, "handled"),
                    (self.published, "published"),
                    (self.forwarded, "forwarded"),
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
        self.flush()
        self._db.close()


def _outcome(stored: str | None) -> Outcome | None:
    return None if stored is None else Outcome.from_json(json.loads(stored))
