"""The serial stage: one event at a time, in sequence order, through the legacy mode.

It takes unhandled entries from the journal, awaits the mode (the program runs, the loop keeps
reading the kernel), stores the outcome durably, and tells the pipeline, which advances its
sinks (the publish queue first). A loss runs nothing: it is handled as it is. With no mode
configured it only moves the handled cursor. While paused it runs nothing (events still queue).

An outcome the journal cannot store (a full disk) is kept and stored again every few seconds
until it is taken; the program is never run again for it, and nothing after it runs meanwhile
(the order holds). Only a stop can end the wait: then the outcome is lost and that one program
runs again at the next start, which the log says.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable

from pnpbroker.journal import Journal, Lost
from pnpbroker.legacy.modes import Mode
from pnpbroker.outcome import Outcome
from pnpbroker.trouble import Trouble
from pnpbroker.uevent import Uevent

log = logging.getLogger(__name__)

PAGE = 512
#: First wait before storing an outcome again; it doubles up to STORE_RETRY_MAX.
STORE_RETRY_SECONDS, STORE_RETRY_MAX = 0.5, 5.0


class Sequencer:
    """Drives the journal's ``handled`` cursor forward, strictly one event at a time."""

    def __init__(self, journal: Journal, mode: Mode | None, on_handled: Callable[[], None]) -> None:
        self.journal = journal
        self.mode = mode
        self.on_handled = on_handled
        self._wake = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._stopping = False
        self._full = Trouble(log)

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        if not self.paused:
            log.info("paused: events are journalled, no program runs, nothing is published")
        self._running.clear()

    def resume(self) -> None:
        if self.paused:
            log.info("resumed")
        self._running.set()

    def notify(self) -> None:
        """New events were journalled. With no mode they are handled at once, here (no task
        switch between the journal and the sinks)."""
        if self.mode is None and not self.paused and not self._stopping:
            self._skip()
        self._wake.set()

    def _skip(self) -> None:
        """Nothing to run: everything journalled counts as handled."""
        if self.journal.handled < self.journal.last:
            self.journal.skip_handling(self.journal.last)
            self.on_handled()

    def stop(self) -> None:
        """Finish the event in hand, then return from :meth:`run`."""
        self._stopping = True
        self._wake.set()
        self._running.set()

    @staticmethod
    async def _handle(mode: Mode, event: Uevent, sequence: int) -> Outcome | None:
        """The mode's outcome; a mode that fails is reported, never stops the stage."""
        try:
            return await mode.run(event, sequence)
        except Exception as exc:
            log.exception("event %d: the legacy stage failed", sequence)
            return Outcome(status=-1, error=f"handler failed: {exc}")

    async def run(self) -> None:
        while not self._stopping:
            await self._running.wait()
            if self._stopping:
                break
            if self.mode is None:  # nothing to run: all that is journalled is handled
                self._skip()
                self._wake.clear()
                await self._wake.wait()
                continue
            records = self.journal.unhandled(PAGE)
            if not records:
                self._wake.clear()
                await self._wake.wait()
                continue
            for record in records:
                if self._stopping or self.paused:
                    break
                outcome = None
                if not isinstance(record, Lost):
                    outcome = await self._handle(self.mode, record.event, record.sequence)
                if not await self._store(record.sequence, outcome):
                    break
                self.on_handled()

    async def _store(self, sequence: int, outcome: Outcome | None) -> bool:
        """Store the outcome, waiting as long as the journal refuses (False: stopped first)."""
        delay = STORE_RETRY_SECONDS
        while True:
            try:
                self.journal.record_outcome(sequence, outcome)
            except sqlite3.Error as exc:
                if self._stopping:
                    log.error(
                        "stopping with the outcome of event %d unstored (%s): its program "
                        "runs again at the next start",
                        sequence,
                        exc,
                    )
                    return False
                self._full.failed(
                    "JOURNAL NOT WRITABLE: cannot store the outcome of event %d (%s); it is "
                    "kept and stored when the journal takes it, nothing else runs meanwhile",
                    sequence,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX)
                continue
            self._full.over("the journal took the outcome of event %d; handling goes on", sequence)
            return True
