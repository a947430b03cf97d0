"""The journal's checkpoints: its write-ahead log copied into the database file, off the loop.

SQLite's automatic checkpoint runs inside whichever commit takes the WAL past 1,000 pages: it
copies them into the database file and, with ``synchronous=NORMAL``, syncs both files, for tens
of milliseconds on a disk. In the broker that commit is an outcome's, on the loop, between one
program's exit and the next program's start: about 50 us per event on average with a
legacy program, more than the commit itself. So the journal turns it off
(``wal_autocheckpoint=0``, :mod:`pnpbroker.journalfile`), counts what it writes, and this
runs the same checkpoint (``PASSIVE``: it never waits for the writer or the readers) from a
connection of its own in a worker thread, as SQLite's documentation suggests for a program
that cannot stall. Durability is unchanged: a checkpoint only moves what the WAL already holds.
A journal whose checkpoints fail (a full disk) keeps every commit in its WAL and retries at the
next threshold; the broker logs it as an ongoing fault.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

from pnpbroker.trouble import Trouble

log = logging.getLogger(__name__)

#: Pages written to the WAL before a checkpoint is due: SQLite's own default threshold.
PAGES = 1000
PAGE_SIZE = 4096


class Checkpoints:
    """Counts the pages the journal writes; :meth:`run` checkpoints each time they reach PAGES."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pages = 0
        self.done = 0
        #: The last checkpoint's ``(busy, frames in the WAL, frames copied)``, as SQLite says.
        self.last: tuple[int, int, int] | None = None
        self.due = asyncio.Event()
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._lock = threading.Lock()  # the worker's checkpoint, or close()
        self._trouble = Trouble(log)

    def wrote(self, pages: int) -> None:
        """A commit wrote about ``pages`` pages to the WAL."""
        self.pages += pages
        if self.pages >= PAGES:
            self.due.set()

    async def run(self) -> None:
        """Checkpoint whenever one is due, until cancelled."""
        while True:
            await self.due.wait()
            self.due.clear()
            self.pages = 0
            try:
                last = await asyncio.to_thread(self._checkpoint)
            except sqlite3.Error as exc:
                self._trouble.failed("journal checkpoint failed (the WAL keeps growing): %s", exc)
                continue
            self._trouble.over("journal checkpoints work again")
            if last is not None:
                self.last = last
                self.done += 1

    def _checkpoint(self) -> tuple[int, int, int] | None:
        """One PASSIVE checkpoint (None once closed); sqlite3.Error if it failed."""
        with self._lock:
            if self._closed:
                return None
            if self._db is None:
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            busy, frames, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return int(busy), int(frames), int(copied)

    def close(self) -> None:
        """Close the thread's connection (before the journal's own: the last one to close
        checkpoints everything and removes the WAL)."""
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None
